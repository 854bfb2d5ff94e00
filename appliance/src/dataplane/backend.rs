//! The one place a forwarding backend is chosen: configuration in, a connected [`Forwarder`]
//! out. A new backend (nftables only, say) is a variant here and an arm in [`connect`]; nothing
//! else names a backend's type.

use super::{Capabilities, DataplaneError, Forwarder, LinuxDataplane, LinuxOptions, Op, State};
use crate::config::{DataplaneConfig, DataplaneMode};

/// The forwarding backend configuration chose, connected.
#[derive(Debug)]
pub enum Backend {
    /// Linux IPVS, with VIP addresses and the appliance's nftables table.
    Ipvs(LinuxDataplane),
}

/// Connects the backend `config` names: `None` when it names none (control plane only). The
/// connection is proven usable (IPVS answers, the interface exists), so a misconfigured host
/// fails here, before the appliance serves.
pub async fn connect(config: &DataplaneConfig) -> Result<Option<Backend>, DataplaneError> {
    match config.mode {
        DataplaneMode::Ipvs => {
            let options = LinuxOptions {
                interface: config.interface.clone(),
                nat: config.nat.mode(),
                announce_count: config.announce_count,
                announce_interval: config.announce_interval,
                ..LinuxOptions::default()
            };
            Ok(Some(Backend::Ipvs(LinuxDataplane::connect(options).await?)))
        }
        DataplaneMode::None => Ok(None),
    }
}

impl Forwarder for Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Ipvs(d) => d.name(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            Backend::Ipvs(d) => d.capabilities(),
        }
    }

    async fn observe(&self) -> Result<State, DataplaneError> {
        match self {
            Backend::Ipvs(d) => d.observe().await,
        }
    }

    async fn apply(&self, ops: &[Op]) -> Result<(), DataplaneError> {
        match self {
            Backend::Ipvs(d) => d.apply(ops).await,
        }
    }
}
