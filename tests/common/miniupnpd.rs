//! Port-mapping routers in the NAT lab: miniupnpd (UPnP-IGD, NAT-PMP and PCP in one daemon) on a
//! lab router, started by `natlab.sh miniupnpd`, and a way to see the mappings it holds.
//!
//! ```ignore
//! let lab = Lab::builder().nat("a", NatKind::PortRestrictedCone).build();
//! let _stun = Coturn::start(..);   // miniupnpd learns its external address by STUN at start-up
//! let upnp = MiniUpnpd::start(&lab, "a", "203.0.113.1", 3478);
//! assert_eq!(upnp.rules(), "");     // nothing left on the router
//! ```

use std::path::PathBuf;
use std::process::Command;

use super::lab::Lab;
use super::tools;

/// miniupnpd running on one lab router; dropping it ends the daemon and removes its files
/// (the lab's own Drop would end it too, with the namespaces).
#[derive(Debug)]
pub struct MiniUpnpd {
    prefix: String,
    name: String,
    /// Holds miniupnpd.conf, miniupnpd.pid and log.
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/natlab.sh")
}

impl MiniUpnpd {
    /// Starts miniupnpd on the router of lab client `name` and waits until it listens (bounded in
    /// the script). A STUN server must answer at `stun_ip:stun_port` in the public namespace.
    pub fn start(lab: &Lab, name: &str, stun_ip: &str, stun_port: u16) -> MiniUpnpd {
        tools::require("miniupnpd", "miniupnpd-nftables");
        let out = Command::new("bash")
            .arg(script())
            .args(["miniupnpd", lab.prefix(), name, stun_ip, &stun_port.to_string()])
            .output()
            .expect("running natlab.sh miniupnpd");
        assert!(
            out.status.success(),
            "natlab.sh miniupnpd failed (apt-get install miniupnpd-nftables; scripts/setup.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        MiniUpnpd { prefix: lab.prefix().to_string(), name: name.to_string(), dir }
    }

    /// The nftables rules miniupnpd holds for mappings (forward, DNAT, SNAT); empty when none.
    pub fn rules(&self) -> String {
        let out = Command::new("bash")
            .arg(script())
            .args(["miniupnpd-rules", &self.prefix, &self.name])
            .output()
            .expect("running natlab.sh miniupnpd-rules");
        assert!(out.status.success(), "miniupnpd-rules: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// miniupnpd's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for MiniUpnpd {
    fn drop(&mut self) {
        // The pid miniupnpd wrote: this lab's own daemon, ended by its id.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("miniupnpd.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
