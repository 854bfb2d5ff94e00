//! The IPVS client: one generic-netlink socket, the `IPVS` family id, request builders shaped
//! like rtnetlink's, dumps as streams, and pipelined batches. It turns replies into domain types
//! and errors; it never decides what to program (that is the reconciler's job).
//!
//! Replies are matched to requests by netlink-proto through sequence numbers, so any number of
//! requests can be in flight on one socket: clone the handle freely and issue requests
//! concurrently, or send many in one datagram with [`IpvsHandle::batch`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    FutureExt, Stream, StreamExt,
    channel::{mpsc::UnboundedReceiver, oneshot},
    future::{self, BoxFuture, Either},
    stream::{self, BoxStream},
};
use genetlink::message::{RawGenlMessage, map_to_rawgenlmsg};
use netlink_packet_core::{ErrorMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::{
    GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_proto::{
    ConnectionHandle,
    sys::{AsyncSocket, SocketAddr, protocols::NETLINK_GENERIC},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Subject, kernel_error};
use super::wire::{self, IpvsMessage};
use super::{Destination, Error, Operation, ServiceKey, VirtualService};

/// Replies to wait for before giving up on a request (time between two replies of a dump).
mod batch;
mod requests;

pub use batch::BatchRequest;
use requests::Prepared;
pub use requests::{
    DestinationDumpRequest, DestinationRequest, DestinationsRequest, InfoRequest, IpvsOp, IpvsRequest,
    ServiceDumpRequest, ServiceGetRequest, ServiceRequest, ServicesRequest,
};
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests per datagram in a batch (at most [`MAX_PER_DATAGRAM`], and the receive-buffer
/// credits). The kernel runs a datagram's requests one after another inside our `sendmsg` and
/// queues one ack each before we read any.
const DEFAULT_PER_DATAGRAM: usize = 64;
const MAX_PER_DATAGRAM: usize = 256;
/// Datagrams handed to the connection ahead of their acks, so it never waits for us.
const DEFAULT_DATAGRAMS_IN_FLIGHT: usize = 4;
/// Stays well below the default socket send buffer; a larger datagram fails with EMSGSIZE.
const MAX_DATAGRAM_BYTES: usize = 32 * 1024;
/// Asked for, capped by `net.core.rmem_max`: headroom for dumps and acks arriving together.
const RECEIVE_BUFFER_BYTES: i32 = 4 * 1024 * 1024;
/// The kernel drops replies (ENOBUFS) once unread ones fill the receive buffer, and the connection
/// may send several datagrams before it reads (measured: 16 datagrams of 256 adds overran a
/// 416 KiB buffer). So every request holds credits, 1 KiB of receive buffer each, until its
/// reply is read: an ack costs ~0.75 KiB. Half the buffer is left to dumps, which the kernel
/// itself throttles.
const CREDIT_BYTES: usize = 1024;
const ACK_CREDITS: u32 = 1;
/// A `doit` answer (a service with its counters) is allocated at the kernel's default size.
const ANSWER_CREDITS: u32 = 8;
/// The kernel runs one dump per socket at a time and answers EBUSY to a second one.
const DUMP_BUSY_RETRIES: u32 = 200;
/// Netlink header (16) and generic-netlink header (4).
const HEADERS_LEN: usize = 20;

type RawMessage = NetlinkMessage<RawGenlMessage>;

/// The netlink connection: a future that must run (spawn it) for the handle to work, like
/// rtnetlink's. It ends when every [`IpvsHandle`] clone is dropped.
pub struct IpvsConnection {
    inner: BoxFuture<'static, ()>,
}

impl Future for IpvsConnection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for IpvsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpvsConnection").finish_non_exhaustive()
    }
}

/// Opens a generic-netlink socket and returns the connection to spawn and a handle, like
/// `rtnetlink::new_connection`. Must run inside a tokio runtime.
pub fn connect() -> Result<(IpvsConnection, IpvsHandle), Error> {
    // netlink-sys registers the socket with the reactor and would panic outside a runtime.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::NoRuntime);
    }
    let (mut conn, conn_handle, unsolicited) =
        netlink_proto::new_connection::<RawGenlMessage>(NETLINK_GENERIC).map_err(Error::Socket)?;
    // Forward acks and NLMSG_DONE: without them a request or dump cut short by a dying
    // connection would look like a success or a complete dump.
    conn.set_forward_ack(true);
    conn.set_forward_done(true);
    let socket = conn.socket_mut().socket_mut();
    // Best effort, all three: the receive buffer is capped at rmem_max anyway (and the credits
    // below follow what we got), and without CAP_ACK (Linux 4.2) or EXT_ACK (4.12) errors are
    // merely longer or less detailed.
    let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER_BYTES);
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    let receive_buffer = socket.get_rx_buf_sz().unwrap_or(0);
    let credits = (receive_buffer / 2 / CREDIT_BYTES).clamp(ANSWER_CREDITS as usize, 1 << 20);

    let overruns = Arc::new(AtomicU64::new(0));
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let watcher = watch_unsolicited(unsolicited, overruns.clone(), shutdown_rx).boxed();
    let mut watcher = Some(watcher);
    let driver = future::poll_fn(move |cx| {
        // The watcher first: once it has dropped the unsolicited channel (every handle gone),
        // the connection sees both its channels closed in this same poll and shuts down.
        if let Some(w) = watcher.as_mut()
            && w.as_mut().poll(cx).is_ready()
        {
            watcher = None;
        }
        Pin::new(&mut conn).poll(cx)
    });
    let handle = IpvsHandle {
        inner: Arc::new(Inner {
            conn: conn_handle,
            family: tokio::sync::OnceCell::new(),
            overruns,
            credits: Arc::new(Semaphore::new(credits)),
            max_credits: credits,
            _shutdown: shutdown_tx,
        }),
        reply_timeout: DEFAULT_REPLY_TIMEOUT,
    };
    Ok((IpvsConnection { inner: driver.boxed() }, handle))
}

/// Counts socket overruns (ENOBUFS: the kernel dropped replies because our receive buffer was
/// full), which netlink-proto reports as unsolicited messages, for [`Error::NoReply`] to mention.
async fn watch_unsolicited(
    mut unsolicited: UnboundedReceiver<(RawMessage, SocketAddr)>,
    overruns: Arc<AtomicU64>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        match future::select(unsolicited.next(), &mut shutdown).await {
            Either::Left((Some((msg, _)), _)) => {
                if matches!(msg.payload, NetlinkPayload::Overrun(_)) {
                    overruns.fetch_add(1, Ordering::Relaxed);
                }
            }
            Either::Left((None, _)) | Either::Right(_) => return,
        }
    }
}

#[derive(Debug)]
struct Inner {
    conn: ConnectionHandle<RawGenlMessage>,
    family: tokio::sync::OnceCell<u16>,
    overruns: Arc<AtomicU64>,
    /// Receive-buffer credits, see [`CREDIT_BYTES`].
    credits: Arc<Semaphore>,
    max_credits: usize,
    /// Dropped with the last handle: tells the connection driver to let go.
    _shutdown: oneshot::Sender<()>,
}

/// Handle to IPVS, cheap to clone; every clone shares one socket and may be used concurrently.
#[derive(Debug, Clone)]
pub struct IpvsHandle {
    inner: Arc<Inner>,
    reply_timeout: Duration,
}

impl IpvsHandle {
    /// Connects and spawns the connection on the current tokio runtime.
    pub fn new() -> Result<Self, Error> {
        let (conn, handle) = connect()?;
        tokio::spawn(conn);
        Ok(handle)
    }

    /// How long to wait for the kernel's next reply before failing with [`Error::NoReply`]
    /// (default 30 s). IPVS answers in microseconds; this only bounds lost replies.
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Resolves (once, then cached) the id the kernel assigned to the `IPVS` generic-netlink
    /// family. Fails with [`Error::IpvsUnavailable`] when the `ip_vs` module is not loaded.
    pub async fn resolve_family(&self) -> Result<u16, Error> {
        self.inner.family.get_or_try_init(|| self.query_family()).await.copied()
    }

    /// Add, edit or delete a virtual service.
    pub fn service(&self, service: impl Into<VirtualService>) -> ServiceRequest {
        ServiceRequest {
            handle: self.clone(),
            service: service.into(),
        }
    }

    /// Dump or look up virtual services.
    pub fn services(&self) -> ServicesRequest {
        ServicesRequest { handle: self.clone() }
    }

    /// Add, edit or delete a real server of `service`.
    pub fn destination(&self, service: &ServiceKey, destination: Destination) -> DestinationRequest {
        DestinationRequest {
            handle: self.clone(),
            service: *service,
            destination,
        }
    }

    /// Dump the real servers of `service`.
    pub fn destinations(&self, service: &ServiceKey) -> DestinationsRequest {
        DestinationsRequest {
            handle: self.clone(),
            service: *service,
        }
    }

    /// Delete every virtual service and real server: `ipvsadm -C`.
    pub fn flush(&self) -> IpvsRequest {
        self.request(IpvsOp::Flush)
    }

    /// IPVS version and connection table size: `ipvsadm --version`.
    pub fn info(&self) -> InfoRequest {
        InfoRequest { handle: self.clone() }
    }

    /// Many operations, pipelined: several per datagram, several datagrams in flight. See
    /// [`BatchRequest`].
    pub fn batch(&self, ops: impl IntoIterator<Item = IpvsOp>) -> BatchRequest {
        BatchRequest {
            handle: self.clone(),
            ops: ops.into_iter().collect(),
            per_datagram: DEFAULT_PER_DATAGRAM,
            datagrams_in_flight: DEFAULT_DATAGRAMS_IN_FLIGHT,
        }
    }

    /// One operation, built from an [`IpvsOp`] rather than the fluent builders.
    pub fn request(&self, op: IpvsOp) -> IpvsRequest {
        IpvsRequest {
            handle: self.clone(),
            op,
        }
    }

    async fn query_family(&self) -> Result<u16, Error> {
        let op = Operation::ResolveFamily;
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(wire::IPVS_GENL_NAME.to_owned())],
        });
        genl.finalize();
        let mut header = NetlinkHeader::default();
        header.flags = wire::ACKED_REQUEST;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        msg.finalize();
        let mut replies = self.send(op, map_to_rawgenlmsg(msg))?;

        let mut family = None;
        loop {
            let reply = self.next_reply(op, &mut replies).await?;
            match reply.payload {
                NetlinkPayload::InnerMessage(raw) => {
                    family = wire::ctrl_family_id(&raw.payload).map_err(|source| Error::Decode { op, source })?;
                }
                NetlinkPayload::Error(err) => {
                    return match errno(&err) {
                        None => family.ok_or_else(|| Error::UnexpectedReply {
                            op,
                            what: "nlctrl answered without a family id".into(),
                        }),
                        Some(libc::ENOENT) => {
                            Err(Error::IpvsUnavailable(std::io::Error::from_raw_os_error(libc::ENOENT)))
                        }
                        Some(code) => Err(kernel_error(
                            op,
                            &Subject::Global,
                            code,
                            wire::extack_message(reply.header.flags, &err.header),
                        )),
                    };
                }
                _ => {}
            }
        }
    }

    fn send(&self, op: Operation, msg: RawMessage) -> Result<BoxStream<'static, RawMessage>, Error> {
        self.inner
            .conn
            .request(msg, SocketAddr::new(0, 0))
            .map(StreamExt::boxed)
            .map_err(|_| Error::ConnectionClosed { op })
    }

    async fn next_reply(
        &self,
        op: Operation,
        replies: &mut (impl Stream<Item = RawMessage> + Unpin),
    ) -> Result<RawMessage, Error> {
        match tokio::time::timeout(self.reply_timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(Error::ConnectionClosed { op }),
            Err(_) => Err(self.no_reply(op)),
        }
    }

    /// Waits for `n` receive-buffer credits, released when the permit drops.
    async fn credits(&self, op: Operation, n: u32) -> Result<OwnedSemaphorePermit, Error> {
        self.inner
            .credits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Error::ConnectionClosed { op })
    }

    fn no_reply(&self, op: Operation) -> Error {
        Error::NoReply {
            op,
            timeout: self.reply_timeout,
            overruns: self.inner.overruns.load(Ordering::Relaxed),
        }
    }

    /// Sends `prepared` in one datagram now, and returns the future of each request's outcome,
    /// in order. Sending before the first poll is what keeps a batch's datagrams in order.
    fn exchange(
        &self,
        family: u16,
        prepared: Vec<Prepared>,
        credits: OwnedSemaphorePermit,
    ) -> impl Future<Output = Vec<Result<(), Error>>> + Send + 'static {
        let (meta, messages): (Vec<_>, Vec<_>) = prepared
            .into_iter()
            .map(|p| {
                let msg = map_to_rawgenlmsg(wire::request(family, p.message, wire::ACKED_REQUEST));
                ((p.op, p.subject), msg)
            })
            .unzip();
        let sent = self
            .inner
            .conn
            .request_batch(messages, SocketAddr::new(0, 0))
            .map(StreamExt::boxed)
            .ok();
        let handle = self.clone();
        async move {
            let outcome = match sent {
                Some(replies) => handle.collect_acks(meta, replies).await,
                None => fail_all(&meta, |op| Error::ConnectionClosed { op }),
            };
            drop(credits);
            outcome
        }
    }

    /// Matches the acks of one datagram to its requests.
    async fn collect_acks(
        &self,
        meta: Vec<(Operation, Subject)>,
        mut replies: BoxStream<'static, RawMessage>,
    ) -> Vec<Result<(), Error>> {
        let count = meta.len();
        // (sequence number, errno or 0, extack) of every ack and error; the stream ends once
        // the connection has seen one for each request.
        let mut outcomes: Vec<(u32, i32, Option<String>)> = Vec::with_capacity(count);
        loop {
            match tokio::time::timeout(self.reply_timeout, replies.next()).await {
                Ok(Some(reply)) => {
                    if let NetlinkPayload::Error(err) = &reply.payload {
                        let code = errno(err).unwrap_or(0);
                        let detail = wire::extack_message(reply.header.flags, &err.header);
                        outcomes.push((reply.header.sequence_number, code, detail));
                    }
                }
                Ok(None) => break,
                Err(_) => return fail_all(&meta, |op| self.no_reply(op)),
            }
        }

        let seqs: Vec<u32> = outcomes.iter().map(|(seq, ..)| *seq).collect();
        let Some(positions) = ack_positions(count, &seqs) else {
            if outcomes.len() < count {
                return fail_all(&meta, |op| Error::ConnectionClosed { op });
            }
            let what = format!("{} acks for {count} requests", outcomes.len());
            return fail_all(&meta, |op| Error::UnexpectedReply { op, what: what.clone() });
        };

        let mut results: Vec<Result<(), Error>> = fail_all(&meta, |op| Error::UnexpectedReply {
            op,
            what: "no ack".into(),
        });
        for ((_, code, detail), position) in outcomes.into_iter().zip(positions) {
            let (op, subject) = &meta[position];
            results[position] = match code {
                0 => Ok(()),
                code => Err(kernel_error(*op, subject, code, detail)),
            };
        }
        results
    }

    /// A `doit` that answers with one message, then an ack.
    async fn request_reply(&self, op: Operation, subject: Subject, message: IpvsMessage) -> Result<IpvsMessage, Error> {
        let family = self.resolve_family().await?;
        let _credits = self.credits(op, ANSWER_CREDITS).await?;
        let request = map_to_rawgenlmsg(wire::request(family, message, wire::ACKED_REQUEST));
        let mut replies = self.send(op, request)?;
        let mut answer = None;
        loop {
            let reply = self.next_reply(op, &mut replies).await?;
            match reply.payload {
                NetlinkPayload::InnerMessage(raw) => {
                    let msg = raw
                        .parse_into_genlmsg::<IpvsMessage>()
                        .map_err(|source| Error::Decode { op, source })?;
                    answer = Some(msg.payload);
                }
                NetlinkPayload::Error(err) => {
                    return match errno(&err) {
                        None => answer.ok_or_else(|| Error::UnexpectedReply {
                            op,
                            what: "ack without an answer".into(),
                        }),
                        Some(code) => Err(kernel_error(
                            op,
                            &subject,
                            code,
                            wire::extack_message(reply.header.flags, &err.header),
                        )),
                    };
                }
                _ => {}
            }
        }
    }

    /// A `dumpit`: its messages, until `NLMSG_DONE`.
    fn dump(
        &self,
        op: Operation,
        subject: Subject,
        message: IpvsMessage,
    ) -> BoxStream<'static, Result<IpvsMessage, Error>> {
        let handle = self.clone();
        stream::once(async move { handle.start_dump(op, subject, message).await })
            .flatten()
            .boxed()
    }

    async fn start_dump(
        self,
        op: Operation,
        subject: Subject,
        message: IpvsMessage,
    ) -> BoxStream<'static, Result<IpvsMessage, Error>> {
        let family = match self.resolve_family().await {
            Ok(family) => family,
            Err(e) => return stream::iter([Err(e)]).boxed(),
        };
        let mut attempt = 0;
        loop {
            let request = map_to_rawgenlmsg(wire::request(family, message.clone(), wire::DUMP_REQUEST));
            let mut replies = match self.send(op, request) {
                Ok(replies) => replies,
                Err(e) => return stream::iter([Err(e)]).boxed(),
            };
            let first = match self.next_reply(op, &mut replies).await {
                Ok(first) => first,
                Err(e) => return stream::iter([Err(e)]).boxed(),
            };
            // Another dump (e.g. from a concurrent task) still runs on this socket: wait briefly.
            if let NetlinkPayload::Error(err) = &first.payload
                && errno(err) == Some(libc::EBUSY)
                && attempt < DUMP_BUSY_RETRIES
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
                continue;
            }
            let state = DumpState {
                handle: self,
                op,
                subject,
                pending: Some(first),
                replies,
            };
            return stream::unfold(Some(state), next_dump_message).boxed();
        }
    }
}

struct DumpState {
    handle: IpvsHandle,
    op: Operation,
    subject: Subject,
    pending: Option<RawMessage>,
    replies: BoxStream<'static, RawMessage>,
}

async fn next_dump_message(state: Option<DumpState>) -> Option<(Result<IpvsMessage, Error>, Option<DumpState>)> {
    let mut state = state?;
    let op = state.op;
    loop {
        let reply = match state.pending.take() {
            Some(reply) => reply,
            None => match state.handle.next_reply(op, &mut state.replies).await {
                Ok(reply) => reply,
                Err(e) => return Some((Err(e), None)),
            },
        };
        match reply.payload {
            NetlinkPayload::InnerMessage(raw) => {
                // A message that does not parse is reported, and the dump goes on.
                let item = raw
                    .parse_into_genlmsg::<IpvsMessage>()
                    .map(|m| m.payload)
                    .map_err(|source| Error::Decode { op, source });
                return Some((item, Some(state)));
            }
            NetlinkPayload::Done(done) => {
                return match done.code {
                    0 => None,
                    code => Some((Err(kernel_error(op, &state.subject, code.saturating_abs(), None)), None)),
                };
            }
            NetlinkPayload::Error(err) => {
                if let Some(code) = errno(&err) {
                    let detail = wire::extack_message(reply.header.flags, &err.header);
                    return Some((Err(kernel_error(op, &state.subject, code, detail)), None));
                }
            }
            NetlinkPayload::Overrun(_) => return Some((Err(state.handle.no_reply(op)), None)),
            _ => {}
        }
    }
}

fn fail_all(meta: &[(Operation, Subject)], error: impl Fn(Operation) -> Error) -> Vec<Result<(), Error>> {
    meta.iter().map(|(op, _)| Err(error(*op))).collect()
}

/// The positive errno of an `NLMSG_ERROR`, or `None` for an ack.
fn errno(err: &ErrorMessage) -> Option<i32> {
    err.code.map(|code| code.get().saturating_abs())
}

/// Where each ack of a `count`-request datagram belongs. netlink-proto numbers a datagram's
/// requests consecutively (wrapping at `u32::MAX`) but does not say from where, so the lowest
/// sequence number is the first request's — provided every request got exactly one ack. Returns
/// `None` otherwise: then no ack can be placed with certainty.
pub(super) fn ack_positions(count: usize, seqs: &[u32]) -> Option<Vec<usize>> {
    if seqs.len() != count {
        return None;
    }
    let first = *seqs.first()?;
    // Offsets from the first reply as signed distances: handles wrap-around and any order.
    let offsets: Vec<i64> = seqs.iter().map(|s| i64::from(s.wrapping_sub(first) as i32)).collect();
    let min = *offsets.iter().min()?;
    let mut seen = vec![false; count];
    let mut positions = Vec::with_capacity(count);
    for offset in offsets {
        let position = usize::try_from(offset - min).ok()?;
        if position >= count || std::mem::replace(&mut seen[position], true) {
            return None;
        }
        positions.push(position);
    }
    Some(positions)
}

/// Splits requests (each with its encoded size) into datagrams of at most `per_datagram`
/// requests and [`MAX_DATAGRAM_BYTES`] bytes.
pub(super) fn datagram_sizes(sizes: &[usize], per_datagram: usize) -> Vec<usize> {
    let per_datagram = per_datagram.clamp(1, MAX_PER_DATAGRAM);
    let mut chunks = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    for &size in sizes {
        if count > 0 && (count == per_datagram || bytes + size > MAX_DATAGRAM_BYTES) {
            chunks.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        chunks.push(count);
    }
    chunks
}

fn record(results: &mut [Result<(), Error>], (indices, outcomes): (Vec<usize>, Vec<Result<(), Error>>)) {
    for (index, outcome) in indices.into_iter().zip(outcomes) {
        results[index] = outcome;
    }
}
