//! A server on a free local port, run on its own tokio runtime, for the HTTP and browser tests.

use std::net::SocketAddr;
use std::time::Duration;

use medify_qlora::BaseModel;
use medify_serve::{ServeConfig, Server};

pub struct Running {
    pub url: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Serves `b` with `config` until [`shutdown`](Self::shutdown) or drop.
    pub fn start(b: BaseModel, config: ServeConfig) -> Running {
        let server = Server::new(b.model, b.tokenizer, b.encoder, config).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?).unwrap();
                server
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Running {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.shutdown();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}
