//! The connection loop under the router, with the deadlines `axum::serve` does not set: a
//! request's head must arrive within [`HEADER_DEADLINE`] (the same bound closes a keep-alive
//! connection that stays idle), and its body within [`body_deadline`] (applied by
//! `layers::wrap`), so clients that send a byte every few seconds cannot hold connections
//! open. Graceful shutdown: stop accepting, let requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// A request's head (request line and headers) must arrive within this; an idle keep-alive
/// connection is closed after it too.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// How long a request body may take: 20 s, and a second more for every 64 KiB it declares
/// (a body must arrive at 64 KiB/s or faster once it is large).
pub fn body_deadline(content_length: Option<u64>) -> Duration {
    Duration::from_secs(20 + content_length.unwrap_or(0) / (64 * 1024))
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for the requests in
/// flight (each handler sees the client's address as `ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let (closed, open) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(target: "kefu::http", "accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            router.clone().oneshot(request.map(Body::new))
        });
        let mut stopped = stopped.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(HEADER_DEADLINE))
                .keep_alive_timeout(HEADER_DEADLINE);
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopped.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    closed.closed().await;
    Ok(())
}

/// A request body that fails once its deadline passes (the handler's extractor answers 400
/// `invalid_body`, or the upload stops), instead of waiting for a slow client for ever.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    pub fn new(inner: Body, deadline: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(deadline)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(
                "the request body did not arrive in time",
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[test]
    fn large_bodies_get_longer_but_bounded_deadlines() {
        assert_eq!(body_deadline(None), Duration::from_secs(20));
        assert_eq!(body_deadline(Some(1000)), Duration::from_secs(20));
        assert_eq!(
            body_deadline(Some(64 * 1024 * 1024)),
            Duration::from_secs(20 + 1024)
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        // One byte, then nothing more for ever.
        let stalled = tokio_stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"a"))])
            .chain(tokio_stream::pending());
        let body = DeadlineBody::new(Body::from_stream(stalled), Duration::from_millis(100));
        let started = std::time::Instant::now();
        let error = axum::body::to_bytes(Body::new(body), 1024)
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains("in time"), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A body that arrives in time is passed through whole.
        let whole = DeadlineBody::new(Body::from("hello"), Duration::from_secs(5));
        let bytes = axum::body::to_bytes(Body::new(whole), 1024).await.unwrap();
        assert_eq!(bytes, "hello");
    }
}
