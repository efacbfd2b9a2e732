//! Serving rearguard's HTTP surface on the daemon's listening socket, within bounds that
//! a peer without a token cannot get around: a header read timeout, a limit on the
//! connections served at once, and a smaller budget of connections that are waiting for
//! a request (just accepted, sending their headers slowly, or idle between requests).
//!
//! When the budget of waiting connections is full, a new connection takes the place of
//! the one that has waited longest, which is closed: a connection that sends its request
//! at once (a health check, Alertmanager, the CLI) is served even while others hold their
//! connections open without asking anything. When every connection slot is taken, the
//! next connection is not accepted: it waits in the kernel's accept backlog, which costs
//! no descriptor, until a slot frees (a client sees a slower answer, not a reset).
//!
//! This module owns accepting and serving connections (HTTP/1.1 through hyper) and their
//! graceful end. It must not know the routes (an axum router is handed in), must not
//! bind a socket (the daemon's socket outlives every configuration), and holds no
//! engine state.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::http::{Request, Response, StatusCode};
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long accepting pauses after an error that is not about one connection (the
/// process or the system out of descriptors or memory), so that it does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// How often closing waiting connections to make room is logged, at most.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a connection waits for a request before it may be closed to make room: its
/// peer's request may be on the way (or read already, its task not yet run). Until then
/// waiting connections may exceed their budget, within `max_connections`.
const GRACE: Duration = Duration::from_millis(250);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Connections waiting for a request's headers; the longest waiting is closed when a
    /// new connection needs its place.
    pub max_waiting: usize,
    /// How long a connection may take to send a request's headers, counted from when it
    /// starts waiting for them (at accept, and after each answer on a kept-alive one).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// `max_connections` at once (at least 1), of which a quarter (at least 1) may be
    /// waiting for a request.
    pub fn new(max_connections: usize, header_read_timeout: Duration) -> Limits {
        let max_connections = max_connections.max(1);
        Limits {
            max_connections,
            max_waiting: (max_connections / 4).max(1),
            header_read_timeout,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting, closes the
/// connections waiting for a request, lets those with a request in progress finish it,
/// and returns when every connection has ended.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let book = Arc::new(Book::new(limits.max_waiting, GRACE));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            // Every slot taken: waiting connections past their grace make room.
            () = tokio::time::sleep(GRACE) => {
                book.trim(&mut book.lock());
                continue;
            }
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    pause_after(&e, &stop).await;
                    continue;
                }
            },
        };
        let conn = Conn {
            slot: Arc::new(book.admit()),
            app: app.clone(),
            header_read_timeout: limits.header_read_timeout,
            stop: stop.clone(),
            _permit: permit,
        };
        connections.spawn(conn.serve(stream));
        // The new connection reads what its peer has already sent before the next one is
        // accepted: a request waiting in its socket makes it busy, so that a burst of new
        // connections closes idle ones rather than it.
        tokio::task::yield_now().await;
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// After an accept error: nothing for an error of one connection (it is gone); a pause
/// otherwise, since accepting again at once would fail the same way.
async fn pause_after(error: &io::Error, stop: &CancellationToken) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %error, pause = ?ACCEPT_PAUSE, "cannot accept a connection");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_PAUSE) => {}
    }
}

/// One accepted connection and what serving it holds.
struct Conn {
    slot: Arc<Slot>,
    app: axum::Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
    /// Its place among `max_connections`, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn serve(self, stream: TcpStream) {
        let handler = Handler {
            app: TowerToHyperService::new(self.app),
            slot: Arc::clone(&self.slot),
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), handler);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Evicted while waiting: dropping the connection closes it.
                () = self.slot.close.cancelled() => return,
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    if self.slot.close_if_waiting() {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The hyper service of one connection: the router, with the connection marked busy
/// from a request's headers until its answer's body is sent.
#[derive(Clone)]
struct Handler {
    app: TowerToHyperService<axum::Router>,
    slot: Arc<Slot>,
}

type Answer = Response<Guarded>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = self.slot.begin();
        let app = self.app.clone();
        Box::pin(async move {
            let Some(busy) = busy else {
                // Closed to make room a moment ago; the connection is going.
                let mut refused = Response::new(Guarded::new(Body::from("connection closed\n")));
                *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok(refused);
            };
            let response = hyper::service::Service::call(&app, request).await?;
            Ok(response.map(|body| Guarded {
                inner: body,
                _busy: Some(busy),
            }))
        })
    }
}

/// An answer's body that keeps its connection busy until it is sent (hyper drops it then).
struct Guarded {
    inner: Body,
    _busy: Option<Busy>,
}

impl Guarded {
    fn new(inner: Body) -> Guarded {
        Guarded { inner, _busy: None }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is doing, as far as the limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers, in line with this ticket (lower waited longer).
    Waiting(u64),
    /// A request is being answered.
    Busy,
    /// Told to close; a request that arrives now is refused.
    Closing,
}

/// The connections of one listener and which of them wait for a request.
struct Book {
    max_waiting: usize,
    grace: Duration,
    state: Mutex<BookState>,
}

#[derive(Default)]
struct BookState {
    next: u64,
    /// Waiting connections by ticket: connection id, and since when it waits.
    line: BTreeMap<u64, (u64, Instant)>,
    /// Every open connection by id: its phase and how to close it.
    conns: HashMap<u64, (Phase, CancellationToken)>,
    /// Connections closed to make room since the last log line, and when that was.
    evicted: u64,
    logged: Option<Instant>,
}

impl Book {
    fn new(max_waiting: usize, grace: Duration) -> Book {
        Book {
            max_waiting: max_waiting.max(1),
            grace,
            state: Mutex::new(BookState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        // A holder that panicked left whole entries behind; the book stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection, waiting for its first request.
    fn admit(self: &Arc<Book>) -> Slot {
        let close = CancellationToken::new();
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        st.conns.insert(id, (Phase::Busy, close.clone()));
        self.wait(&mut st, id);
        Slot {
            book: Arc::clone(self),
            id,
            close,
        }
    }

    /// Puts connection `id` at the end of the line of waiting ones, then trims the line.
    fn wait(&self, st: &mut BookState, id: u64) {
        let ticket = st.next;
        st.next += 1;
        st.line.insert(ticket, (id, Instant::now()));
        if let Some(entry) = st.conns.get_mut(&id) {
            entry.0 = Phase::Waiting(ticket);
        }
        self.trim(st);
    }

    /// Closes the connections that waited longest while the line is over its budget,
    /// sparing those still within their grace.
    fn trim(&self, st: &mut BookState) {
        while st.line.len() > self.max_waiting {
            let Some(entry) = st.line.first_entry() else {
                break;
            };
            if entry.get().1.elapsed() < self.grace {
                break;
            }
            let (oldest, _) = entry.remove();
            if let Some(entry) = st.conns.get_mut(&oldest) {
                entry.0 = Phase::Closing;
                entry.1.cancel();
            }
            st.evicted += 1;
        }
        if st.evicted > 0
            && st
                .logged
                .is_none_or(|at| at.elapsed() >= EVICTION_LOG_EVERY)
        {
            tracing::warn!(
                closed = st.evicted,
                max_waiting = self.max_waiting,
                "closed connections that sent no request, to make room for new ones"
            );
            st.evicted = 0;
            st.logged = Some(Instant::now());
        }
    }
}

/// A connection's entry in its [`Book`], removed when dropped.
struct Slot {
    book: Arc<Book>,
    id: u64,
    /// Cancelled when the connection is closed to make room.
    close: CancellationToken,
}

impl Slot {
    /// A request's headers arrived: busy until the returned guard is dropped. `None`
    /// when the connection was just told to close.
    fn begin(self: &Arc<Slot>) -> Option<Busy> {
        let mut st = self.book.lock();
        let entry = st.conns.get_mut(&self.id)?;
        match entry.0 {
            Phase::Closing => return None,
            Phase::Busy => {}
            Phase::Waiting(ticket) => {
                entry.0 = Phase::Busy;
                st.line.remove(&ticket);
            }
        }
        Some(Busy {
            slot: Arc::clone(self),
        })
    }

    /// At a stop: marks the connection closing if it waits for a request, and says so.
    fn close_if_waiting(&self) -> bool {
        let mut st = self.book.lock();
        let Some(entry) = st.conns.get_mut(&self.id) else {
            return true;
        };
        match entry.0 {
            Phase::Waiting(ticket) => {
                entry.0 = Phase::Closing;
                st.line.remove(&ticket);
                true
            }
            Phase::Closing => true,
            Phase::Busy => false,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.book.lock();
        if let Some((Phase::Waiting(ticket), _)) = st.conns.remove(&self.id) {
            st.line.remove(&ticket);
        }
    }
}

/// A request in progress on a connection; back to waiting when dropped.
struct Busy {
    slot: Arc<Slot>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let book = &self.slot.book;
        let mut st = book.lock();
        if matches!(st.conns.get(&self.slot.id), Some((Phase::Busy, _))) {
            book.wait(&mut st, self.slot.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Book {
        fn phase(&self, id: u64) -> Option<Phase> {
            self.lock().conns.get(&id).map(|e| e.0)
        }

        fn waiting(&self) -> usize {
            self.lock().line.len()
        }
    }

    fn book(max_waiting: usize) -> Arc<Book> {
        Arc::new(Book::new(max_waiting, Duration::ZERO))
    }

    #[test]
    fn connections_within_their_grace_are_not_closed_to_make_room() {
        let b = Arc::new(Book::new(1, Duration::from_secs(3600)));
        let slots: Vec<Slot> = (0..3).map(|_| b.admit()).collect();
        assert!(slots.iter().all(|s| !s.close.is_cancelled()));
        assert_eq!(b.waiting(), 3, "over the budget, within max_connections");
    }

    #[test]
    fn a_quarter_of_the_connections_may_wait_and_never_none() {
        let secs = Duration::from_secs(5);
        assert_eq!(Limits::new(256, secs).max_waiting, 64);
        assert_eq!(Limits::new(3, secs).max_waiting, 1);
        assert_eq!(Limits::new(0, secs).max_connections, 1);
    }

    #[test]
    fn a_new_connection_over_the_budget_closes_the_one_that_waited_longest() {
        let b = book(2);
        let first = b.admit();
        let second = b.admit();
        assert!(!first.close.is_cancelled());
        let third = b.admit();
        assert!(first.close.is_cancelled(), "the oldest waiting one goes");
        assert_eq!(b.phase(first.id), Some(Phase::Closing));
        assert!(!second.close.is_cancelled() && !third.close.is_cancelled());
        assert_eq!(b.waiting(), 2);
    }

    #[test]
    fn a_connection_with_a_request_in_progress_is_never_closed_to_make_room() {
        let b = book(1);
        let busy = Arc::new(b.admit());
        let guard = busy.begin().expect("not closing");
        assert_eq!(b.waiting(), 0);
        let others: Vec<Slot> = (0..5).map(|_| b.admit()).collect();
        assert!(!busy.close.is_cancelled());
        assert_eq!(others.iter().filter(|s| s.close.is_cancelled()).count(), 4);
        // Answered: it waits again, last in line, so the newest other one goes now.
        drop(guard);
        assert_eq!(
            b.phase(busy.id).map(|p| matches!(p, Phase::Waiting(_))),
            Some(true)
        );
        assert!(others[4].close.is_cancelled());
        assert!(!busy.close.is_cancelled());
    }

    #[test]
    fn a_request_on_a_connection_told_to_close_is_refused() {
        let b = book(1);
        let old = Arc::new(b.admit());
        let _new = b.admit();
        assert!(old.begin().is_none());
    }

    #[test]
    fn at_a_stop_waiting_connections_close_and_busy_ones_finish() {
        let b = book(4);
        let idle = b.admit();
        let working = Arc::new(b.admit());
        let _guard = working.begin();
        assert!(idle.close_if_waiting());
        assert!(!working.close_if_waiting());
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn an_ended_connection_leaves_the_book() {
        let b = book(2);
        let a = b.admit();
        let id = a.id;
        drop(a);
        assert_eq!(b.phase(id), None);
        assert_eq!(b.waiting(), 0);
    }
}
