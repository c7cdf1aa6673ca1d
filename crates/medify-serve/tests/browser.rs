//! The web chat in a real browser: headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol on a pipe, opens the page of a server running SmolLM2-135M-Instruct, types
//! questions and presses Enter. It must see the answer stream in, equal to what `Chat` answers
//! for the same conversation; the disclaimer under each answer; the emergency banner (or, for a
//! same-day matter, the calmer urgent notice) above the
//! answer to a red-flag question; and the stop button ending an answer early.
//!
//! Skipped when Chromium or the SmolLM2 GGUF is missing, unless `MEDIFY_REQUIRE_CHROMIUM` /
//! `MEDIFY_REQUIRE_SMOLLM2` is set (`.ci/run` sets both). With `MEDIFY_SCREENSHOT=FILE.png` the
//! page is saved after the red-flag answer (docs/web-chat.png was made so).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use burn::tensor::Device;
use medify_qlora::data::{Message, Role};
use medify_qlora::models::GenerationConfig;
use medify_qlora::safety::{DEFAULT_SYSTEM_PROMPT, triage};
use medify_qlora::{Chat, DISCLAIMER, load_base};
use medify_serve::ServeConfig;
use serde_json::{Value, json};

use crate::common;

/// Chromium with its DevTools protocol on fds 3 (commands in) and 4 (replies out),
/// NUL-separated JSON messages.
struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    replies: BufReader<std::io::PipeReader>,
    next_id: u64,
    session: Option<String>,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    fn launch(chromium: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!("medify-chromium-{}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let (cmd_read, commands) = std::io::pipe().unwrap();
        let (replies, reply_write) = std::io::pipe().unwrap();
        let (r, w) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                "--window-size=1000,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe
        // ends are first moved above fd 10 so that placing one on 3 cannot close the other.
        unsafe {
            command.pre_exec(move || {
                let r2 = libc::fcntl(r, libc::F_DUPFD, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((cmd_read, reply_write));
        let mut b = Browser {
            child,
            commands,
            replies: BufReader::new(replies),
            next_id: 0,
            session: None,
            _profile: TempDir(profile),
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1000, "height": 1100, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends one command and waits for its reply (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.commands.write_all(msg.to_string().as_bytes()).unwrap();
        self.commands.write_all(b"\0").unwrap();
        self.commands.flush().unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.replies.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the DevTools pipe during {method}");
            buf.pop();
            let reply: Value = serde_json::from_slice(&buf).unwrap();
            if reply["id"] == self.next_id {
                assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is true; `each` sees the page state on every poll.
    fn wait_for(&mut self, expression: &str, timeout: Duration, mut each: impl FnMut(&Value)) {
        let start = Instant::now();
        loop {
            each(&self.eval(STATE));
            if self.eval(expression) == json!(true) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {expression}; page: {}",
                self.eval(STATE)
            );
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Types `text` into the question box like a user and presses Enter.
    fn ask(&mut self, text: &str) {
        self.eval("document.getElementById('input').focus()");
        self.call("Input.insertText", json!({"text": text}));
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
            );
        }
    }

    /// Types `text`, then waits until the page shows `answers` finished answers.
    fn ask_until_answered(&mut self, text: &str, answers: usize) {
        self.ask(text);
        self.wait_for(
            &format!(
                "document.querySelectorAll('.turn.assistant .disclaimer').length === {answers} && \
                 !document.getElementById('send').disabled"
            ),
            Duration::from_secs(120),
            |_| {},
        );
    }

    /// Sets a settings field the way a user's edit does (input and change events).
    fn set(&mut self, id: &str, value: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById('{id}'); e.value = '{value}'; \
             e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); }})()"
        ));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every assistant turn on the page, and whether an answer is streaming.
const STATE: &str = "JSON.stringify({busy: document.getElementById('send')?.disabled ?? null, \
    turns: [...document.querySelectorAll('.turn.assistant')].map(t => ({\
      answer: t.querySelector('.answer').textContent, \
      disclaimer: t.querySelector('.disclaimer')?.textContent ?? null, \
      emergency: t.querySelector('.emergency')?.textContent ?? null, \
      urgent: t.querySelector('.urgent')?.textContent ?? null, \
      stopped: !!t.querySelector('.stopped'), \
      error: t.querySelector('.error')?.textContent ?? null}))})";

fn state(v: &Value) -> Value {
    serde_json::from_str(v.as_str().unwrap()).unwrap()
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEDIFY_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("MEDIFY_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(
                    ".cache/medify-qlora/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
                )
            })
        })?;
    p.is_file().then_some(p)
}

#[test]
fn web_chat_streams_answers_with_disclaimer_banner_and_stop() {
    let (Some(chromium), Some(gguf)) = (chromium(), smollm2()) else {
        for var in ["MEDIFY_REQUIRE_CHROMIUM", "MEDIFY_REQUIRE_SMOLLM2"] {
            assert!(
                std::env::var_os(var).is_none(),
                "{var} is set but Chromium or the SmolLM2 GGUF was not found"
            );
        }
        eprintln!("skipped: needs chromium and the SmolLM2 GGUF (cargo xtask fetch-model)");
        return;
    };
    let device = Device::flex();
    let served = load_base(&gguf, &device, None, None).unwrap();
    let server = common::Running::start(
        served,
        ServeConfig {
            model_name: "SmolLM2-135M-Instruct".into(),
            ..ServeConfig::default()
        },
    );
    let reference = load_base(&gguf, &device, None, None).unwrap();
    let chat = Chat::new(&reference.model, &reference.tokenizer, &reference.encoder)
        .with_generation(GenerationConfig {
            max_new_tokens: 40,
            ..GenerationConfig::default()
        });

    let mut browser = Browser::launch(&chromium);
    browser.call("Page.navigate", json!({"url": format!("{}/", server.url)}));
    browser.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('input')",
        Duration::from_secs(30),
        |_| {},
    );
    // The page asks /v1/models for the name it shows.
    browser.wait_for(
        "document.getElementById('model').textContent === 'SmolLM2-135M-Instruct'",
        Duration::from_secs(10),
        |_| {},
    );
    browser.set("temperature", "0");
    browser.set("max-tokens", "40");

    // A plain question: the answer streams in (seen part-way), then the disclaimer.
    let q1 = "What is anemia?";
    browser.ask(q1);
    let mut partial = false;
    browser.wait_for(
        "document.querySelectorAll('.turn.assistant .disclaimer').length === 1 && \
         !document.getElementById('send').disabled",
        Duration::from_secs(120),
        |s| {
            let s = state(s);
            partial |= s["busy"] == true
                && s["turns"][0]["answer"]
                    .as_str()
                    .is_some_and(|a| !a.is_empty());
        },
    );
    assert!(partial, "the answer was shown while it streamed");
    let mut conversation = vec![
        Message::new(Role::System, DEFAULT_SYSTEM_PROMPT),
        Message::new(Role::User, q1),
    ];
    let want1 = chat.answer(&conversation, &mut |_| {}).unwrap();
    let s = state(&browser.eval(STATE));
    let turn = &s["turns"][0];
    assert_eq!(turn["answer"], want1.text, "{s}");
    assert_eq!(turn["disclaimer"], DISCLAIMER);
    assert!(
        turn["emergency"].is_null() && turn["error"].is_null(),
        "{s}"
    );

    // A red-flag follow-up: the banner above the answer; the history went with it.
    let q2 = "My dad's face is drooping and he can't lift his arm";
    browser.ask_until_answered(q2, 2);
    conversation.push(Message::new(Role::Assistant, want1.text.trim()));
    conversation.push(Message::new(Role::User, q2));
    let want2 = chat.answer(&conversation, &mut |_| {}).unwrap();
    let s = state(&browser.eval(STATE));
    let turn = &s["turns"][1];
    assert_eq!(turn["answer"], want2.text, "{s}");
    assert_eq!(turn["emergency"], triage(q2).unwrap().message, "{s}");
    assert_eq!(turn["disclaimer"], DISCLAIMER);
    let banner_first = browser.eval(
        "(() => { const t = document.querySelectorAll('.turn.assistant')[1]; \
         return t.firstElementChild.classList.contains('emergency'); })()",
    );
    assert_eq!(
        banner_first,
        json!(true),
        "the banner comes before the answer"
    );
    if let Some(path) = std::env::var_os("MEDIFY_SCREENSHOT") {
        let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }

    // A same-day matter: the calmer notice, not the alarm banner.
    let q3 = "I have a UTI and now a fever and pain in my back";
    browser.ask_until_answered(q3, 3);
    let s = state(&browser.eval(STATE));
    let turn = &s["turns"][2];
    assert_eq!(turn["urgent"], triage(q3).unwrap().message, "{s}");
    assert!(turn["emergency"].is_null(), "{s}");
    assert!(s["turns"][1]["urgent"].is_null(), "{s}");

    // Stop: a long answer ends when the button is pressed, and the server cancels it.
    browser.set("max-tokens", "2000");
    browser.ask("Tell me everything about the heart.");
    browser.wait_for(
        "(document.querySelectorAll('.turn.assistant')[3]?.querySelector('.answer').textContent.length ?? 0) > 0",
        Duration::from_secs(60),
        |_| {},
    );
    browser.eval("document.getElementById('stop').click()");
    browser.wait_for(
        "!document.getElementById('send').disabled",
        Duration::from_secs(10),
        |_| {},
    );
    let s = state(&browser.eval(STATE));
    assert_eq!(s["turns"][3]["stopped"], true, "{s}");
    let mut health = Value::Null;
    for _ in 0..200 {
        let mut resp = common::agent()
            .get(format!("{}/health", server.url))
            .call()
            .unwrap();
        health = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        if health["disconnected"] == 1 && health["running"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        health["disconnected"], 1,
        "the stopped answer was cancelled: {health}"
    );
    assert_eq!(health["running"], 0, "{health}");
}
