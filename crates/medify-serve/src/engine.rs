//! The engine: one thread owns the model and runs a [`DecodeBatch`], so every client's decode
//! step shares one forward pass. Requests arrive through a bounded queue (full → the caller
//! answers 429); tokens go back through one channel per request, and a request whose receiver
//! is gone (the client disconnected) is cancelled before the next step.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use medify_models::{CausalLm, DecodeBatch, GenerationConfig, SequenceId, StopReason};
use tokio::sync::mpsc;

/// What a request's channel receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next token id.
    Token(u32),
    /// Generation ended (after the last token).
    Done(StopReason),
    /// The request failed (bad input the model refused, or an internal error).
    Failed(String),
}

/// One generation request.
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling settings, stop ids and token budget.
    pub config: GenerationConfig,
    /// Where the tokens go; dropping the receiver cancels the request.
    pub events: mpsc::UnboundedSender<Event>,
}

/// Sizes of the batch and of the queue in front of it.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Sequences decoding together at most.
    pub max_batch: usize,
    /// Requests waiting for a place in the batch at most.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 16,
            queue: 64,
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every queue place is taken.
    #[error("the request queue is full; retry later")]
    QueueFull,
    /// The engine has stopped.
    #[error("the server is shutting down")]
    Closed,
}

/// A handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    abort: Arc<AtomicBool>,
    running: Arc<AtomicUsize>,
    disconnected: Arc<AtomicUsize>,
    /// Makes the next step panic (tests check the engine survives it).
    #[cfg(test)]
    panic_next: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the engine thread over `model`. It stops once every `Engine` handle is dropped
    /// and the requests in flight have finished (or [`abort`](Self::abort) was called).
    pub fn start(
        model: Arc<CausalLm>,
        config: EngineConfig,
    ) -> std::io::Result<(Engine, std::thread::JoinHandle<()>)> {
        let (jobs, rx) = mpsc::channel(config.queue.max(1));
        let abort = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let disconnected = Arc::new(AtomicUsize::new(0));
        let counters = Counters {
            abort: abort.clone(),
            running: running.clone(),
            disconnected: disconnected.clone(),
            #[cfg(test)]
            panic_next: Arc::new(AtomicBool::new(false)),
        };
        #[cfg(test)]
        let panic_next = counters.panic_next.clone();
        let handle = std::thread::Builder::new()
            .name("medify-engine".into())
            .spawn(move || run(&model, rx, config.max_batch.max(1), &counters))?;
        Ok((
            Engine {
                jobs,
                abort,
                running,
                disconnected,
                #[cfg(test)]
                panic_next,
            },
            handle,
        ))
    }

    /// Queues a request without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })
    }

    /// Sequences in the batch now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Requests cancelled so far because their receiver was dropped (the client went away).
    pub fn disconnected(&self) -> usize {
        self.disconnected.load(Ordering::Relaxed)
    }

    /// Requests waiting for a place in the batch.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Cancels every request in flight (after a shutdown's grace period).
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
}

struct Counters {
    abort: Arc<AtomicBool>,
    running: Arc<AtomicUsize>,
    disconnected: Arc<AtomicUsize>,
    #[cfg(test)]
    panic_next: Arc<AtomicBool>,
}

fn run(model: &CausalLm, mut rx: mpsc::Receiver<Job>, max_batch: usize, counters: &Counters) {
    let Counters {
        abort,
        running,
        disconnected,
        ..
    } = counters;
    let mut batch = DecodeBatch::new(model);
    let mut live: HashMap<SequenceId, mpsc::UnboundedSender<Event>> = HashMap::new();
    let mut closing = false;
    loop {
        running.store(live.len(), Ordering::Relaxed);
        if batch.is_empty() {
            if closing {
                return;
            }
            match rx.blocking_recv() {
                Some(job) => admit(&mut batch, &mut live, job),
                None => return,
            }
        }
        while !closing && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => admit(&mut batch, &mut live, job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closing = true,
            }
        }
        if abort.load(Ordering::SeqCst) {
            for (id, tx) in live.drain() {
                batch.cancel(id);
                let _ = tx.send(Event::Done(StopReason::Cancelled));
            }
            continue;
        }
        live.retain(|id, tx| {
            let gone = tx.is_closed();
            if gone {
                batch.cancel(*id);
                disconnected.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        running.store(live.len(), Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if counters.panic_next.swap(false, Ordering::SeqCst) {
                panic!("injected by a test");
            }
            batch.step()
        })) {
            Ok(Ok(tokens)) => {
                for t in tokens {
                    let Some(tx) = live.get(&t.sequence) else {
                        continue;
                    };
                    let _ = tx.send(Event::Token(t.id));
                    if let Some(reason) = t.finished {
                        let _ = tx.send(Event::Done(reason));
                        live.remove(&t.sequence);
                    }
                }
            }
            Ok(Err(e)) => fail_all(&mut live, &e.to_string()),
            Err(_) => {
                // The batch's state is unknown after a panic: start a new one.
                fail_all(&mut live, "internal error during generation");
                batch = DecodeBatch::new(model);
            }
        }
    }
}

fn admit(
    batch: &mut DecodeBatch<'_>,
    live: &mut HashMap<SequenceId, mpsc::UnboundedSender<Event>>,
    job: Job,
) {
    match batch.admit(job.prompt, &job.config) {
        Ok(id) => {
            live.insert(id, job.events);
        }
        Err(e) => {
            let _ = job.events.send(Event::Failed(e.to_string()));
        }
    }
}

fn fail_all(live: &mut HashMap<SequenceId, mpsc::UnboundedSender<Event>>, why: &str) {
    for (_, tx) in live.drain() {
        let _ = tx.send(Event::Failed(why.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use medify_models::LoadOptions;

    fn tiny() -> Arc<CausalLm> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny_models/llama"
        );
        let (model, _) =
            CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
        Arc::new(model)
    }

    /// Queues `prompt`; the receiver gets its events.
    fn send(
        engine: &Engine,
        prompt: Vec<u32>,
        config: GenerationConfig,
    ) -> mpsc::UnboundedReceiver<Event> {
        let (events, rx) = mpsc::unbounded_channel();
        engine
            .submit(Job {
                prompt,
                config,
                events,
            })
            .unwrap();
        rx
    }

    fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, Event) {
        let mut ids = Vec::new();
        loop {
            match rx.blocking_recv().expect("the engine hung up early") {
                Event::Token(id) => ids.push(id),
                end => return (ids, end),
            }
        }
    }

    /// Concurrent requests each get what `generate` gives them alone; a dropped receiver is
    /// cancelled without disturbing the others; a bad prompt fails only itself.
    #[test]
    fn concurrent_requests_get_their_own_answers() {
        let model = tiny();
        let (engine, thread) = Engine::start(model.clone(), EngineConfig::default()).unwrap();
        let prompts = [vec![1, 59, 76], vec![1, 80, 81, 82, 83], vec![1, 7]];
        let cfg = |i: u64| GenerationConfig {
            max_new_tokens: 6,
            temperature: 0.8,
            seed: i,
            ..Default::default()
        };
        let receivers: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| send(&engine, p.clone(), cfg(i as u64)))
            .collect();
        drop(send(&engine, vec![1, 2, 3], cfg(9)));
        let bad = send(&engine, vec![], cfg(0));
        let mut waited = 0;
        while engine.disconnected() == 0 && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(
            engine.disconnected(),
            1,
            "the dropped receiver was cancelled"
        );
        for (i, rx) in receivers.into_iter().enumerate() {
            let (ids, end) = collect(rx);
            let want = model
                .generate(&[prompts[i].clone()], &cfg(i as u64), &mut |_, _| true)
                .unwrap();
            assert_eq!(ids, want[0].ids, "request {i}");
            assert_eq!(end, Event::Done(StopReason::MaxTokens));
        }
        assert!(matches!(collect(bad).1, Event::Failed(_)));
        drop(engine);
        thread.join().unwrap();
    }

    /// A panic inside a step fails the requests in flight; the engine goes on serving.
    #[test]
    fn a_panic_fails_only_the_requests_in_flight() {
        let model = tiny();
        let (engine, thread) = Engine::start(model.clone(), EngineConfig::default()).unwrap();
        let cfg = GenerationConfig {
            max_new_tokens: 5,
            ..Default::default()
        };
        engine.panic_next.store(true, Ordering::SeqCst);
        assert_eq!(
            collect(send(&engine, vec![1, 5, 9], cfg.clone())),
            (
                vec![],
                Event::Failed("internal error during generation".into())
            )
        );
        let rx = send(&engine, vec![1, 5, 9], cfg.clone());
        let want = model
            .generate(&[vec![1, 5, 9]], &cfg, &mut |_, _| true)
            .unwrap();
        assert_eq!(
            collect(rx),
            (want[0].ids.clone(), Event::Done(StopReason::MaxTokens))
        );
        drop(engine);
        thread.join().unwrap();
    }

    #[test]
    fn a_full_queue_is_refused() {
        let (jobs, _rx) = mpsc::channel(1);
        let engine = Engine {
            jobs,
            abort: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicUsize::new(0)),
            disconnected: Arc::new(AtomicUsize::new(0)),
            panic_next: Arc::new(AtomicBool::new(false)),
        };
        let job = || Job {
            prompt: vec![1],
            config: GenerationConfig::default(),
            events: mpsc::unbounded_channel().0,
        };
        engine.submit(job()).unwrap();
        assert_eq!(engine.queued(), 1);
        assert!(matches!(engine.submit(job()), Err(SubmitError::QueueFull)));
    }
}
