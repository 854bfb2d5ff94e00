//! Errors of the IPVS client: the kernel's errno, mapped per operation to a message that says
//! what to do. It owns that mapping and never decides policy (e.g. whether EEXIST is fine).

use std::{fmt, io, net::SocketAddr, time::Duration};

use netlink_packet_core::DecodeError;

use super::ServiceKey;

/// The operation an error came from, with its `ipvsadm` equivalent in [`Operation::ipvsadm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    ResolveFamily,
    AddService,
    EditService,
    DeleteService,
    GetService,
    DumpServices,
    AddDestination,
    EditDestination,
    DeleteDestination,
    DumpDestinations,
    Flush,
    Info,
    /// A batch as a whole, e.g. when it cannot start.
    Batch,
}

impl Operation {
    /// The `ipvsadm` command doing the same.
    pub fn ipvsadm(self) -> &'static str {
        match self {
            Operation::ResolveFamily => "ipvsadm --version",
            Operation::AddService => "ipvsadm -A",
            Operation::EditService => "ipvsadm -E",
            Operation::DeleteService => "ipvsadm -D",
            Operation::GetService => "ipvsadm -L -t|-u|-f SERVICE",
            Operation::DumpServices => "ipvsadm -L -n",
            Operation::AddDestination => "ipvsadm -a",
            Operation::EditDestination => "ipvsadm -e",
            Operation::DeleteDestination => "ipvsadm -d",
            Operation::DumpDestinations => "ipvsadm -L -n",
            Operation::Flush => "ipvsadm -C",
            Operation::Info => "ipvsadm --version",
            Operation::Batch => "ipvsadm -R",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::ResolveFamily => "resolve the IPVS netlink family",
            Operation::AddService => "add service",
            Operation::EditService => "edit service",
            Operation::DeleteService => "delete service",
            Operation::GetService => "get service",
            Operation::DumpServices => "dump services",
            Operation::AddDestination => "add real server",
            Operation::EditDestination => "edit real server",
            Operation::DeleteDestination => "delete real server",
            Operation::DumpDestinations => "dump real servers",
            Operation::Flush => "flush",
            Operation::Info => "get IPVS info",
            Operation::Batch => "batch",
        })
    }
}

/// Why an IPVS operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot open a generic netlink socket")]
    Socket(#[source] io::Error),

    #[error("the IPVS netlink connection must be created inside a tokio runtime")]
    NoRuntime,

    #[error("the kernel has no IPVS (load module ip_vs)")]
    IpvsUnavailable(#[source] io::Error),

    #[error("{op}: permission denied: IPVS needs CAP_NET_ADMIN")]
    PermissionDenied {
        op: Operation,
        #[source]
        source: io::Error,
    },

    #[error("scheduler '{scheduler}' is not available: load kernel module ip_vs_{scheduler}")]
    SchedulerUnavailable {
        scheduler: String,
        #[source]
        source: io::Error,
    },

    #[error("service {service} already exists")]
    ServiceExists {
        service: ServiceKey,
        #[source]
        source: io::Error,
    },

    #[error("service {service} not found")]
    ServiceNotFound {
        service: ServiceKey,
        #[source]
        source: io::Error,
    },

    #[error("real server {destination} of service {service} already exists")]
    DestinationExists {
        service: ServiceKey,
        destination: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("real server {destination} not found in service {service}")]
    DestinationNotFound {
        service: ServiceKey,
        destination: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("{op}: address family not supported by this kernel (IPv6 disabled?)")]
    AddressFamilyNotSupported {
        op: Operation,
        #[source]
        source: io::Error,
    },

    #[error("{op}: the kernel rejected an argument{}", with_detail(detail))]
    InvalidArgument {
        op: Operation,
        /// The kernel's extended-ack message, when it sent one.
        detail: Option<String>,
        #[source]
        source: io::Error,
    },

    #[error("{op} failed{}", with_detail(detail))]
    Kernel {
        op: Operation,
        detail: Option<String>,
        #[source]
        source: io::Error,
    },

    /// Refused before sending: the kernel would answer a bare `EINVAL`/`ERANGE`.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("{op}: the netlink connection is closed")]
    ConnectionClosed { op: Operation },

    /// The outcome is unknown: dump the kernel state again before deciding anything.
    #[error(
        "{op}: no reply from the kernel within {timeout:?}, outcome unknown{}",
        overrun_note(*overruns)
    )]
    NoReply {
        op: Operation,
        timeout: Duration,
        /// Netlink socket overruns seen on this connection so far.
        overruns: u64,
    },

    #[error("{op}: malformed reply from the kernel")]
    Decode {
        op: Operation,
        #[source]
        source: DecodeError,
    },

    #[error("{op}: unexpected reply from the kernel: {what}")]
    UnexpectedReply { op: Operation, what: String },
}

fn with_detail(detail: &Option<String>) -> String {
    detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

fn overrun_note(overruns: u64) -> String {
    if overruns == 0 {
        String::new()
    } else {
        format!(" ({overruns} netlink socket overruns: fewer requests in flight would help)")
    }
}

impl Error {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::IpvsUnavailable(source)
            | Error::PermissionDenied { source, .. }
            | Error::SchedulerUnavailable { source, .. }
            | Error::ServiceExists { source, .. }
            | Error::ServiceNotFound { source, .. }
            | Error::DestinationExists { source, .. }
            | Error::DestinationNotFound { source, .. }
            | Error::AddressFamilyNotSupported { source, .. }
            | Error::InvalidArgument { source, .. }
            | Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The service or real server to create already exists.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::ServiceExists { .. } | Error::DestinationExists { .. })
    }

    /// The service or real server to change or delete does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::ServiceNotFound { .. } | Error::DestinationNotFound { .. })
    }
}

/// What a request was about, so an errno can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Subject {
    Global,
    Service {
        key: ServiceKey,
        /// The scheduler requested by an add or edit: ENOENT then means it is missing.
        scheduler: Option<String>,
    },
    Destination {
        service: ServiceKey,
        destination: SocketAddr,
    },
}

/// Maps the kernel's positive `errno` for `op` on `subject`, following `ip_vs_genl_set_cmd` and
/// `ip_vs_add_service` in net/netfilter/ipvs/ip_vs_ctl.c.
pub(super) fn kernel_error(op: Operation, subject: &Subject, errno: i32, detail: Option<String>) -> Error {
    let source = io::Error::from_raw_os_error(errno);
    match (errno, op, subject) {
        // GENL_ADMIN_PERM on every IPVS command.
        (libc::EPERM, ..) => Error::PermissionDenied { op, source },
        (
            libc::ENOENT,
            Operation::AddService | Operation::EditService,
            Subject::Service {
                scheduler: Some(scheduler),
                ..
            },
        ) => Error::SchedulerUnavailable {
            scheduler: scheduler.clone(),
            source,
        },
        (libc::EEXIST, Operation::AddService, Subject::Service { key, .. }) => {
            Error::ServiceExists { service: *key, source }
        }
        (libc::ESRCH, _, Subject::Service { key, .. }) => Error::ServiceNotFound { service: *key, source },
        (libc::ESRCH, _, Subject::Destination { service, .. }) => Error::ServiceNotFound {
            service: *service,
            source,
        },
        (libc::EEXIST, Operation::AddDestination, Subject::Destination { service, destination }) => {
            Error::DestinationExists {
                service: *service,
                destination: *destination,
                source,
            }
        }
        (
            libc::ENOENT,
            Operation::EditDestination | Operation::DeleteDestination,
            Subject::Destination { service, destination },
        ) => Error::DestinationNotFound {
            service: *service,
            destination: *destination,
            source,
        },
        (libc::EAFNOSUPPORT, ..) => Error::AddressFamilyNotSupported { op, source },
        // ip_vs_add_dest / ip_vs_edit_dest refuse a negative weight and a lower threshold above
        // the upper one with ERANGE, without saying which.
        (libc::ERANGE, Operation::AddDestination | Operation::EditDestination, _) => Error::InvalidArgument {
            op,
            detail: detail.or_else(|| Some("weight or thresholds out of range (lower threshold above upper?)".into())),
            source,
        },
        // ip_vs_add_dest refuses an address inet_addr_type/ipv6_addr_type does not call unicast
        // or local (with no IPv4 local table at all, e.g. `lo` down, nothing is unicast), and a
        // family other than the service's unless tunnelling.
        (libc::EINVAL, Operation::AddDestination | Operation::EditDestination, _) => Error::InvalidArgument {
            op,
            detail: detail.or_else(|| {
                Some(
                    "the real server must be a unicast address (checked against the local \
                         routing table: is `lo` up?) of the service's family unless tunnelling"
                        .into(),
                )
            }),
            source,
        },
        (libc::EINVAL | libc::ERANGE, ..) => Error::InvalidArgument { op, detail, source },
        _ => Error::Kernel { op, detail, source },
    }
}
