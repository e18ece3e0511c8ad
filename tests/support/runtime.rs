//! A tokio runtime of a test server's own, so that a server works the same
//! from `#[tokio::test]` (either flavour) or a plain `#[test]`, and a test
//! that blocks its own runtime (waiting for a child process, say) does not
//! stall the server.
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};

use tokio::runtime::{Handle, Runtime};

pub(crate) struct ServerRuntime(Option<Runtime>);

impl ServerRuntime {
    pub(crate) fn new(name: &str) -> ServerRuntime {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{name}-server"))
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("starting the {name} server's runtime: {e}"));
        ServerRuntime(Some(rt))
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.0.as_ref().expect("runtime lives until drop").handle()
    }

    /// Binds 127.0.0.1 on a random port, as a tokio listener of this runtime.
    pub(crate) fn bind(&self) -> (tokio::net::TcpListener, SocketAddr) {
        let std = StdListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        std.set_nonblocking(true).expect("non-blocking listener");
        let addr = std.local_addr().expect("listener address");
        let _in_rt = self.handle().enter();
        (tokio::net::TcpListener::from_std(std).expect("tokio listener"), addr)
    }

    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle().spawn(fut);
    }

    /// Runs `fut` on this runtime and waits for it from whatever runtime
    /// the caller is on.
    pub(crate) async fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        match self.handle().spawn(fut).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("server task failed: {e}"),
        }
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        // Does not block, so dropping a server inside an async test is fine;
        // open connections are cut.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
