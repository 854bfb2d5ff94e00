//! Pipelined batches of [`IpvsHandle`]: many operations packed several to a datagram, a few
//! datagrams in flight.

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use netlink_packet_core::Emitable;

use super::{HEADERS_LEN, IpvsHandle, IpvsOp, MAX_PER_DATAGRAM, Prepared, datagram_sizes, record};
use crate::dataplane::ipvs::{Error, Operation};

/// Many operations pipelined over the one socket.
///
/// They are encoded up front, packed several to a netlink datagram (the kernel processes a
/// datagram's requests in order and acks each), and up to a few datagrams are queued in the
/// connection at once, so thousands of operations cost a few hundred system calls rather than a
/// round trip each. Operations run in the given order; one failing does not stop the rest (as
/// with `ipvsadm -R`, order dependent operations accordingly: services before their real servers).
///
/// A datagram whose acks cannot all be matched (a reply lost to a socket overrun, the connection
/// closing) reports every one of its operations as failed with an unknown outcome: dump again
/// before deciding anything.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct BatchRequest {
    pub(super) handle: IpvsHandle,
    pub(super) ops: Vec<IpvsOp>,
    pub(super) per_datagram: usize,
    pub(super) datagrams_in_flight: usize,
}

impl BatchRequest {
    /// Requests per datagram, 1 to 256 (default 64), and never more than the socket's receive
    /// buffer has credits for. More per datagram means fewer system calls but more acks queued
    /// at once in the receive buffer.
    pub fn messages_per_datagram(mut self, n: usize) -> Self {
        self.per_datagram = n.clamp(1, MAX_PER_DATAGRAM);
        self
    }

    /// Datagrams handed to the connection ahead of their acks (default 4, at least 1).
    pub fn datagrams_in_flight(mut self, n: usize) -> Self {
        self.datagrams_in_flight = n.max(1);
        self
    }

    /// Runs the batch. The outer error is about the batch as a whole (no IPVS, no connection);
    /// the inner results are per operation, in the order given.
    pub async fn execute(self) -> Result<Vec<Result<(), Error>>, Error> {
        let family = self.handle.resolve_family().await?;
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(self.ops.len());
        let mut ready = Vec::with_capacity(self.ops.len());
        for (index, op) in self.ops.into_iter().enumerate() {
            match op.prepare() {
                Ok(prepared) => {
                    // Replaced by the outcome; stays only if the kernel's reply went missing.
                    results.push(Err(Error::UnexpectedReply {
                        op: prepared.op,
                        what: "no outcome".into(),
                    }));
                    ready.push((index, prepared));
                }
                Err(e) => results.push(Err(e)),
            }
        }

        let sizes: Vec<usize> = ready
            .iter()
            .map(|(_, p)| HEADERS_LEN + p.message.buffer_len())
            .collect();
        let per_datagram = self.per_datagram.min(self.handle.inner.max_credits);
        let mut ready = ready.into_iter();
        let datagrams: Vec<Vec<(usize, Prepared)>> = datagram_sizes(&sizes, per_datagram)
            .into_iter()
            .map(|n| ready.by_ref().take(n).collect())
            .collect();

        // Hand each datagram to the connection in order (exchange sends before returning), with
        // at most `datagrams_in_flight` awaiting their acks and their acks' credits held.
        let credits = &self.handle.inner.credits;
        let mut in_flight = FuturesOrdered::new();
        for datagram in datagrams {
            let (indices, prepared): (Vec<usize>, Vec<Prepared>) = datagram.into_iter().unzip();
            let needed = u32::try_from(prepared.len()).unwrap_or(u32::MAX);
            let permit = loop {
                if in_flight.len() < self.datagrams_in_flight
                    && let Ok(permit) = credits.clone().try_acquire_many_owned(needed)
                {
                    break permit;
                }
                // Our own datagrams in flight hold credits: read their acks to free them.
                match in_flight.next().await {
                    Some(done) => record(&mut results, done),
                    None => break self.handle.credits(Operation::Batch, needed).await?,
                }
            };
            let outcome = self.handle.exchange(family, prepared, permit);
            in_flight.push_back(outcome.map(move |outcome| (indices, outcome)));
        }
        while let Some(done) = in_flight.next().await {
            record(&mut results, done);
        }
        Ok(results)
    }
}
