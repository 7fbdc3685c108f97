//! Which rails a node has, and opening them on one thread.
//!
//! A rail is one endpoint on one domain; its index is its position in the list:
//! - `efa`: every RDM domain of the provider (one per device; the `-dgrm` ones never), in the
//!   order of their domain names. The bind addresses are ignored: EFA addresses are device
//!   GIDs.
//! - `shm`: one rail (shm names are derived from the node string, so it takes no address).
//! - IP providers (`tcp`, `tcp;ofi_rxm`, `udp;ofi_rxd`): one rail per bind address, in the
//!   order given; none given, one rail on the provider's first entry. Asked with a node
//!   address and `FI_SOURCE`, libfabric 1.17 lists only the interface that holds it (rxd one
//!   entry, rxm several of the same domain), bound to it at port 0; of those the entry whose
//!   source address is the bind address is taken, and none is an error. The same address
//!   twice is two rails: two endpoints on two ports.

use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use fabric::{Domain, Endpoint, EndpointConfig};
use tokio::sync::watch;

use super::counters::Counters;
use super::event_loop::Engine;
use super::mailbox::Mailbox;
use super::rail::Rail;
use super::{EngineError, FabricPinger, Group, PingerConfig, Published, Shared};
use crate::fabric_ping::wire::{HEADER_LEN, MAX_ADDR_LEN};

/// The largest message on rails 1 and up, and so their slot size: a ping with the largest
/// address. They carry single pings only (larger probes are rail 0's), so a ping asked of
/// them at `--probe-size` is cut to this (the engine caps a probe at its slot size), and a
/// peer's, cut the same way, fits. Slots of `max_probe_size` (8 KiB) on every rail were a
/// third of a 32-rail agent's memory (BENCHMARKS.md).
pub const RAIL_PING_MAX: usize = HEADER_LEN + MAX_ADDR_LEN;

/// Opens the rails `binds` make on `config.provider` (see the module docs), all on one
/// thread; one handle per rail, in rail order. `config.bind` is not read.
pub fn open_rails(
    config: &PingerConfig,
    binds: &[IpAddr],
) -> Result<Vec<FabricPinger>, EngineError> {
    start_rails(rail_infos(config, binds)?, config.clone())
}

/// Opens the rails of `config.bind` alone, on one thread: every device on `efa`, one rail
/// elsewhere.
pub fn open_all(config: &PingerConfig) -> Result<Vec<FabricPinger>, EngineError> {
    open_rails(config, config.bind.as_slice())
}

/// How a provider's rails are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RailSource {
    /// One per device.
    Devices,
    /// One, whatever is asked.
    Single,
    /// One per local address.
    Addresses,
}

fn rail_source(provider: &str) -> RailSource {
    match provider.split(';').next() {
        Some("efa") => RailSource::Devices,
        Some("shm") => RailSource::Single,
        _ => RailSource::Addresses,
    }
}

/// The `fi_info` of each rail `binds` make on `config.provider`, in rail order (see the
/// module docs), for [`start_rails`] or a caller that picks some.
pub fn rail_infos(
    config: &PingerConfig,
    binds: &[IpAddr],
) -> Result<Vec<fabric::Info>, EngineError> {
    // Queues no deeper than what the engine keeps in flight: providers size their own
    // pools by them (rxd's are ~4 MiB per endpoint at its defaults).
    let query = |node: Option<String>| {
        fabric::Query::provider(&config.provider)
            .bind(node.as_deref())
            .queue_sizes(config.tx_slots, config.rx_slots)
    };
    match rail_source(&config.provider) {
        RailSource::Devices => {
            let list = fabric::InfoList::get(&query(None))?;
            let mut devices: Vec<_> = list
                .per_domain()
                .into_iter()
                .filter(|info| !info.domain_name().ends_with("-dgrm"))
                .collect();
            devices.sort_by_key(|info| info.domain_name());
            Ok(devices
                .iter()
                .map(|info| info.to_owned())
                .collect::<Result<_, _>>()?)
        }
        RailSource::Single => {
            let list = fabric::InfoList::get(&query(None))?;
            let first = list.iter().next().map(|info| info.to_owned()).transpose()?;
            Ok(first.into_iter().collect())
        }
        RailSource::Addresses if binds.is_empty() => {
            let list = fabric::InfoList::get(&query(None))?;
            let first = list.iter().next().map(|info| info.to_owned()).transpose()?;
            Ok(first.into_iter().collect())
        }
        RailSource::Addresses => binds
            .iter()
            .map(|bind| {
                let list = fabric::InfoList::get(&query(Some(bind.to_string())))?;
                let at_bind = list
                    .iter()
                    .find(|info| info.source_address().map(|a| a.ip()) == Some(*bind));
                match at_bind {
                    Some(info) => Ok(info.to_owned()?),
                    None => Err(EngineError::NoInterfaceAt {
                        provider: config.provider.clone(),
                        bind: *bind,
                        listed: list
                            .per_domain()
                            .iter()
                            .map(|info| info.domain_name())
                            .collect(),
                    }),
                }
            })
            .collect(),
    }
}

/// Opens an endpoint on each of `infos`' domains, rail `i` on `infos[i]`, and starts one
/// thread for them all; one handle per rail, in that order. No infos, no thread.
pub fn start_rails(
    infos: Vec<fabric::Info>,
    config: PingerConfig,
) -> Result<Vec<FabricPinger>, EngineError> {
    if infos.is_empty() {
        return Ok(Vec::new());
    }
    let mut rails = Vec::with_capacity(infos.len());
    let mut shared = Vec::with_capacity(infos.len());
    for (index, info) in infos.into_iter().enumerate() {
        let (rail, rail_shared) = open_rail(index, info, &config)?;
        rails.push(rail);
        shared.push(rail_shared);
    }
    let (tx, rx) = mpsc::channel();
    let mailbox = Arc::new(Mailbox::default());
    let engine = Engine::new(rails, rx, mailbox.clone());
    let thread = std::thread::Builder::new()
        .name(format!("fabric-{}", shared[0].domain))
        .spawn(move || engine.run())
        .map_err(EngineError::Thread)?;
    let group = Arc::new(Group {
        thread_id: thread.thread().id(),
        thread: Mutex::new(Some(thread)),
        mailbox,
    });
    Ok(shared
        .into_iter()
        .map(|shared| FabricPinger {
            shared,
            commands: tx.clone(),
            group: group.clone(),
        })
        .collect())
}

fn open_rail(
    index: usize,
    info: fabric::Info,
    config: &PingerConfig,
) -> Result<(Rail, Arc<Shared>), EngineError> {
    let provider = info.provider_name();
    let fabric_name = info.fabric_name();
    let domain_name = info.domain_name();
    let domain = Domain::open(info)?;
    let slot_size = if index == 0 {
        config.max_probe_size.max(RAIL_PING_MAX)
    } else {
        RAIL_PING_MAX
    };
    let endpoint_config = EndpointConfig {
        slot_size,
        tx_slots: config.tx_slots,
        rx_slots: config.rx_slots,
        ..EndpointConfig::default()
    };
    let endpoint = Endpoint::open(&domain, endpoint_config)?;
    let shared = Arc::new(Shared {
        rail: index,
        steady: index > 0,
        provider,
        fabric: fabric_name,
        domain: domain_name,
        published: watch::Sender::new(Published::of(&endpoint)),
        id: rand::random(),
        counters: Counters::default(),
    });
    let rail = Rail::new(endpoint, endpoint_config, shared.clone(), config.clone());
    Ok((rail, shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efa_opens_devices_shm_one_rail_and_ip_providers_one_per_address() {
        assert_eq!(rail_source("efa"), RailSource::Devices);
        assert_eq!(rail_source("shm"), RailSource::Single);
        for ip in ["tcp", "tcp;ofi_rxm", "udp;ofi_rxd", "udp"] {
            assert_eq!(rail_source(ip), RailSource::Addresses, "{ip}");
        }
    }
}
