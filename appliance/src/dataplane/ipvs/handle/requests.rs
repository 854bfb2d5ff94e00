//! The request builders of [`IpvsHandle`]: one change ([`IpvsOp`], [`IpvsRequest`]), services
//! and their dumps, destinations and their dumps, and the module's info.

use futures::{Stream, StreamExt};

use super::{ACK_CREDITS, IpvsHandle};
use crate::dataplane::ipvs::error::Subject;
use crate::dataplane::ipvs::wire::{self, IpvsMessage};
use crate::dataplane::ipvs::{
    Destination, DestinationEntry, Error, Info, Operation, ServiceEntry, ServiceKey, VirtualService,
};

/// One change to IPVS, for [`IpvsHandle::batch`] and [`IpvsHandle::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsOp {
    /// `ipvsadm -A`.
    AddService(VirtualService),
    /// `ipvsadm -E`.
    EditService(VirtualService),
    /// `ipvsadm -D`.
    DeleteService(ServiceKey),
    /// `ipvsadm -a`.
    AddDestination(ServiceKey, Destination),
    /// `ipvsadm -e`.
    EditDestination(ServiceKey, Destination),
    /// `ipvsadm -d`: only the destination's address and port matter.
    DeleteDestination(ServiceKey, Destination),
    /// `ipvsadm -C`.
    Flush,
}

/// A request ready to encode: the message and what its errors are about.
pub(super) struct Prepared {
    pub(super) op: Operation,
    pub(super) subject: Subject,
    pub(super) message: IpvsMessage,
}

impl IpvsOp {
    /// Validates and encodes; refuses up front what the kernel would refuse without saying why.
    pub(super) fn prepare(self) -> Result<Prepared, Error> {
        let service_subject = |key: ServiceKey, scheduler: Option<String>| Subject::Service { key, scheduler };
        let dest_subject = |service: ServiceKey, dest: &Destination| Subject::Destination {
            service,
            destination: dest.socket_addr(),
        };
        Ok(match self {
            IpvsOp::AddService(svc) => {
                svc.validate()?;
                Prepared {
                    op: Operation::AddService,
                    subject: service_subject(svc.key(), Some(svc.scheduler().to_owned())),
                    message: wire::new_service(&svc),
                }
            }
            IpvsOp::EditService(svc) => {
                svc.validate()?;
                Prepared {
                    op: Operation::EditService,
                    subject: service_subject(svc.key(), Some(svc.scheduler().to_owned())),
                    message: wire::set_service(&svc),
                }
            }
            IpvsOp::DeleteService(key) => Prepared {
                op: Operation::DeleteService,
                subject: service_subject(key, None),
                message: wire::del_service(&key),
            },
            IpvsOp::AddDestination(key, dest) => {
                dest.validate()?;
                Prepared {
                    op: Operation::AddDestination,
                    subject: dest_subject(key, &dest),
                    message: wire::new_dest(&key, &dest),
                }
            }
            IpvsOp::EditDestination(key, dest) => {
                dest.validate()?;
                Prepared {
                    op: Operation::EditDestination,
                    subject: dest_subject(key, &dest),
                    message: wire::set_dest(&key, &dest),
                }
            }
            IpvsOp::DeleteDestination(key, dest) => Prepared {
                op: Operation::DeleteDestination,
                subject: dest_subject(key, &dest),
                message: wire::del_dest(&key, dest.addr, dest.port),
            },
            IpvsOp::Flush => Prepared {
                op: Operation::Flush,
                subject: Subject::Global,
                message: wire::flush(),
            },
        })
    }
}

/// One acknowledged operation; run it with [`IpvsRequest::execute`].
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct IpvsRequest {
    pub(super) handle: IpvsHandle,
    pub(super) op: IpvsOp,
}

impl IpvsRequest {
    /// Sends the request and waits for the kernel's ack.
    pub async fn execute(self) -> Result<(), Error> {
        let prepared = self.op.prepare()?;
        let family = self.handle.resolve_family().await?;
        let op = prepared.op;
        let credits = self.handle.credits(op, ACK_CREDITS).await?;
        let mut results = self.handle.exchange(family, vec![prepared], credits).await;
        results.pop().unwrap_or_else(|| {
            Err(Error::UnexpectedReply {
                op,
                what: "no outcome".into(),
            })
        })
    }

    /// The operation, e.g. to put it in a batch instead.
    pub fn into_op(self) -> IpvsOp {
        self.op
    }
}

/// Builders for one virtual service.
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    pub(super) handle: IpvsHandle,
    pub(super) service: VirtualService,
}

impl ServiceRequest {
    /// `ipvsadm -A -t VIP:port -s rr [-p timeout] [-M netmask] [-b flags]`.
    pub fn add(self) -> IpvsRequest {
        self.handle.request(IpvsOp::AddService(self.service))
    }

    /// `ipvsadm -E -t VIP:port -s wrr ...`: replaces scheduler, flags, timeout and netmask.
    pub fn edit(self) -> IpvsRequest {
        self.handle.request(IpvsOp::EditService(self.service))
    }

    /// `ipvsadm -D -t VIP:port`: only the service's key is sent.
    pub fn delete(self) -> IpvsRequest {
        self.handle.request(IpvsOp::DeleteService(self.service.key()))
    }
}

/// Queries over all virtual services.
#[derive(Debug, Clone)]
pub struct ServicesRequest {
    pub(super) handle: IpvsHandle,
}

impl ServicesRequest {
    /// `ipvsadm -L -n`: every virtual service with its counters.
    pub fn dump(self) -> ServiceDumpRequest {
        ServiceDumpRequest { handle: self.handle }
    }

    /// `ipvsadm -L -n -t VIP:port`: one service, or [`Error::ServiceNotFound`].
    pub fn get(self, key: &ServiceKey) -> ServiceGetRequest {
        ServiceGetRequest {
            handle: self.handle,
            key: *key,
        }
    }
}

/// A dump of every virtual service.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct ServiceDumpRequest {
    pub(super) handle: IpvsHandle,
}

impl ServiceDumpRequest {
    /// The services as they arrive. An entry that does not parse is an `Err` item and the dump
    /// goes on; the stream ends after the kernel's `NLMSG_DONE`, or with an error if the dump was
    /// cut short, so a stream that ends without error is the complete table.
    pub fn execute(self) -> impl Stream<Item = Result<ServiceEntry, Error>> + Send + 'static {
        let op = Operation::DumpServices;
        self.handle
            .dump(op, Subject::Global, wire::dump_services())
            .map(move |msg| {
                msg.and_then(|msg| wire::parse_service_entry(&msg).map_err(|source| Error::Decode { op, source }))
            })
    }
}

/// A lookup of one virtual service.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct ServiceGetRequest {
    pub(super) handle: IpvsHandle,
    pub(super) key: ServiceKey,
}

impl ServiceGetRequest {
    pub async fn execute(self) -> Result<ServiceEntry, Error> {
        let op = Operation::GetService;
        let subject = Subject::Service {
            key: self.key,
            scheduler: None,
        };
        let msg = self
            .handle
            .request_reply(op, subject, wire::get_service(&self.key))
            .await?;
        wire::parse_service_entry(&msg).map_err(|source| Error::Decode { op, source })
    }
}

/// Builders for one real server of a service.
#[derive(Debug, Clone)]
pub struct DestinationRequest {
    pub(super) handle: IpvsHandle,
    pub(super) service: ServiceKey,
    pub(super) destination: Destination,
}

impl DestinationRequest {
    /// `ipvsadm -a -t VIP:port -r NODE:nodePort -m -w weight [-x upper] [-y lower]`.
    pub fn add(self) -> IpvsRequest {
        self.handle
            .request(IpvsOp::AddDestination(self.service, self.destination))
    }

    /// `ipvsadm -e -t VIP:port -r NODE:nodePort -m -w weight`: e.g. weight 0 to drain.
    pub fn edit(self) -> IpvsRequest {
        self.handle
            .request(IpvsOp::EditDestination(self.service, self.destination))
    }

    /// `ipvsadm -d -t VIP:port -r NODE:nodePort`.
    pub fn delete(self) -> IpvsRequest {
        self.handle
            .request(IpvsOp::DeleteDestination(self.service, self.destination))
    }
}

/// Queries over the real servers of one service.
#[derive(Debug, Clone)]
pub struct DestinationsRequest {
    pub(super) handle: IpvsHandle,
    pub(super) service: ServiceKey,
}

impl DestinationsRequest {
    /// `ipvsadm -L -n -t VIP:port`: the service's real servers with counters. The kernel answers
    /// an empty list, not an error, for a service that does not exist.
    pub fn dump(self) -> DestinationDumpRequest {
        DestinationDumpRequest {
            handle: self.handle,
            service: self.service,
        }
    }
}

/// A dump of one service's real servers.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct DestinationDumpRequest {
    pub(super) handle: IpvsHandle,
    pub(super) service: ServiceKey,
}

impl DestinationDumpRequest {
    /// The real servers as they arrive; same completeness rules as [`ServiceDumpRequest`].
    pub fn execute(self) -> impl Stream<Item = Result<DestinationEntry, Error>> + Send + 'static {
        let op = Operation::DumpDestinations;
        let family = self.service.family();
        let subject = Subject::Service {
            key: self.service,
            scheduler: None,
        };
        self.handle
            .dump(op, subject, wire::dump_dests(&self.service))
            .map(move |msg| {
                msg.and_then(|msg| wire::parse_dest_entry(&msg, family).map_err(|source| Error::Decode { op, source }))
            })
    }
}

/// A query of IPVS's version and connection table size.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until executed"]
pub struct InfoRequest {
    pub(super) handle: IpvsHandle,
}

impl InfoRequest {
    pub async fn execute(self) -> Result<Info, Error> {
        let op = Operation::Info;
        let msg = self.handle.request_reply(op, Subject::Global, wire::get_info()).await?;
        wire::parse_info(&msg).map_err(|source| Error::Decode { op, source })
    }
}
