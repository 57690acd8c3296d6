//! Running natkit against servers that never answer, with a hard bound:
//! a test must fail (not hang) when a command ignores its own timeout.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP listener on loopback that accepts every connection and never sends
/// a byte (a WebSocket handshake sent to it waits forever). The accepted
/// sockets stay open as long as the listener value lives.
pub struct SilentListener {
    pub addr: SocketAddr,
    _accepting: thread::JoinHandle<()>,
}

impl SilentListener {
    pub fn start() -> SilentListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
        let addr = listener.local_addr().expect("local addr");
        let accepting = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in listener.incoming().flatten() {
                // Drain what arrives so the client's writes never block, answer nothing.
                let mut reader = conn.try_clone().expect("clone");
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                });
                held.push(conn);
            }
        });
        SilentListener { addr, _accepting: accepting }
    }
}

/// Runs `cmd` and returns its output, or `None` when it is still running
/// after `limit` (then it is killed): the caller asserts it finished.
pub fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return Some(child.wait_with_output().expect("output")),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A network namespace whose only resolver (`/etc/netns/NAME/resolv.conf`)
/// is an address inside it whose DNS packets are dropped in the input hook:
/// every lookup waits until glibc gives up, as behind a dead DNS server.
/// Removed (namespace and resolv.conf) on drop, also when the test fails.
pub struct BlackholeDnsNs {
    pub name: String,
}

impl BlackholeDnsNs {
    pub fn create(tag: &str) -> BlackholeDnsNs {
        let name = format!("nkdns-{tag}-{}", std::process::id());
        let ns = BlackholeDnsNs { name: name.clone() };
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip (iproute2; run scripts/setup.sh)");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "addr", "add", "10.77.0.1/24", "dev", "lo"]);
        let rules = "table inet blackhole { chain in { type filter hook input priority 0; udp dport 53 drop; tcp dport 53 drop; }; }";
        let st = Command::new("ip")
            .args(["netns", "exec", &name, "nft", rules])
            .status()
            .expect("nft (nftables; run scripts/setup.sh)");
        assert!(st.success(), "nft rules in {name}");
        let dir = format!("/etc/netns/{name}");
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NS");
        std::fs::write(format!("{dir}/resolv.conf"), "nameserver 10.77.0.53\noptions timeout:5 attempts:2\n")
            .expect("resolv.conf");
        // A name with only an IPv6 address, answered from the hosts file (no DNS): `-4` makes it bad input.
        std::fs::write(format!("{dir}/hosts"), "127.0.0.1 localhost\n2001:db8::1 v6only.test\n").expect("hosts");
        ns
    }

    /// `program args…` inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }
}

impl Drop for BlackholeDnsNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// Sends `signal` to `child`, waits up to 10 s for it to end (then kills it),
/// and returns everything it printed.
pub fn stop_with(mut child: Child, signal: libc::c_int) -> Output {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("collecting the child's output")
}
