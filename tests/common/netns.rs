//! A NAT lab made of network namespaces, for tests that need real NATs between nodes.
//!
//! ```text
//!            la (A 10.1.0.2)                         lb (B 10.2.0.2)
//!                 | eth0                                  | eth0
//!                 | lan 10.1.0.1                          | lan 10.2.0.1
//!            ra (NAT) wan 198.18.1.2        rb (NAT) wan 198.18.2.2
//!                 |                                       |
//!                 | ra 198.18.1.1                         | rb 198.18.2.1
//!                 +--------- inet (forwards; P 198.18.0.1 on lo) ---------+
//! ```
//!
//! The namespaces are linked only to each other (no link into the test's own namespace) and use
//! addresses that exist only inside them. Each router masquerades its LAN behind its WAN address
//! and drops unsolicited packets arriving on its WAN side, as a home router does. Everything is
//! removed when the [`Lab`] drops, also when a test panics. Needs root; see [`lab_available`].

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Spec;

/// Every lab namespace name starts with this, then the test process's pid.
const PREFIX: &str = "mtlab";

/// Per-process lab counter (tests of one binary run in parallel threads).
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Whether the NAT lab can run here. Not root: prints a SKIPPED line and returns false. Root
/// without `ip` or `iptables`: panics (CI installs them, so a skip there would hide the tests).
pub fn lab_available(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Under CI a skipped lab would be a silent hole in the suite: CI runs as root.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI is set but this is not root; the NAT lab must run under CI \
             (run .ci/run as root)"
        );
        eprintln!("SKIPPED {test}: the NAT lab needs root (network namespaces, iptables)");
        return false;
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "--version")] {
        if let Err(e) = Command::new(tool).arg(arg).output() {
            panic!(
                "{test}: the NAT lab needs `{tool}` (packages iproute2 and iptables; .ci/run \
                 installs them when run as root), but running it failed: {e}"
            );
        }
    }
    true
}

/// How a home router maps its LAN to its WAN address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Plain MASQUERADE: keeps the source port when free, so the mapping is
    /// endpoint-independent and a UDP hole punch works.
    Cone,
    /// MASQUERADE --random-fully: a new random port per destination ("symmetric").
    Symmetric,
}

/// A running lab; see the module docs for the topology.
pub struct Lab {
    /// The "internet": forwards between the routers and hosts the public node P.
    pub inet: String,
    /// Home router of LAN A (NAT).
    pub ra: String,
    /// Home router of LAN B (NAT).
    pub rb: String,
    /// LAN A, with host A.
    pub la: String,
    /// LAN B, with host B.
    pub lb: String,
    /// The public node's address (in `inet`).
    pub p_ip: String,
    /// Host A's address (in `la`).
    pub a_ip: String,
    /// Host B's address (in `lb`).
    pub b_ip: String,
    /// Router A's public (WAN) address: what A's traffic comes from, seen from the internet.
    pub ra_wan: String,
    /// Router B's public (WAN) address.
    pub rb_wan: String,
    /// Namespaces created so far (deleted on drop).
    created: Vec<String>,
}

impl Lab {
    /// Builds the lab with the given NAT on router A and router B. Panics (after removing
    /// whatever was built) if any `ip` or `iptables` command fails.
    pub fn new(nat_a: Nat, nat_b: Nat) -> Lab {
        remove_stale();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let name = |role: &str| format!("{prefix}-{role}");
        let mut lab = Lab {
            inet: name("inet"),
            ra: name("ra"),
            rb: name("rb"),
            la: name("la"),
            lb: name("lb"),
            p_ip: "198.18.0.1".into(),
            a_ip: "10.1.0.2".into(),
            b_ip: "10.2.0.2".into(),
            ra_wan: "198.18.1.2".into(),
            rb_wan: "198.18.2.2".into(),
            created: Vec::new(),
        };
        // On a panic in here, `lab` drops and removes what exists so far.
        lab.build(nat_a, nat_b);
        lab
    }

    fn build(&mut self, nat_a: Nat, nat_b: Nat) {
        for ns in [&self.inet, &self.ra, &self.rb, &self.la, &self.lb] {
            run(&["ip", "netns", "add", ns]);
            self.created.push(ns.clone());
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // The internet: P's address on lo, a link to each router, forwarding between them.
        run(&[
            "ip",
            "-n",
            &self.inet,
            "addr",
            "add",
            "198.18.0.1/32",
            "dev",
            "lo",
        ]);
        forwarding(&self.inet);
        for (router, lan, side, n, nat) in [
            (&self.ra, &self.la, "ra", 1, nat_a),
            (&self.rb, &self.lb, "rb", 2, nat_b),
        ] {
            // inet <-> router WAN: 198.18.n.1 (inet) and 198.18.n.2 (router).
            veth(&self.inet, side, router, "wan");
            addr_up(&self.inet, side, &format!("198.18.{n}.1/24"));
            addr_up(router, "wan", &format!("198.18.{n}.2/24"));
            route_default(router, &format!("198.18.{n}.1"));
            // router LAN <-> host: 10.n.0.1 (router) and 10.n.0.2 (host).
            veth(router, "lan", lan, "eth0");
            addr_up(router, "lan", &format!("10.{n}.0.1/24"));
            addr_up(lan, "eth0", &format!("10.{n}.0.2/24"));
            route_default(lan, &format!("10.{n}.0.1"));
            // NAT, and no unsolicited packets from the WAN side (see NATLAB facts: without the
            // INPUT drop, an early punch packet leaves conntrack state that makes MASQUERADE
            // pick a new port for the other side's punch).
            forwarding(router);
            let mut masq = vec![
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if nat == Nat::Symmetric {
                masq.push("--random-fully");
            }
            in_ns(router, &masq);
            for chain in ["INPUT", "FORWARD"] {
                in_ns(
                    router,
                    &[
                        "iptables",
                        "-w",
                        "-A",
                        chain,
                        "-i",
                        "wan",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW,INVALID",
                        "-j",
                        "DROP",
                    ],
                );
            }
        }
    }

    /// Runs `args` inside namespace `ns` (one of this lab's names) and returns its output,
    /// unchecked: e.g. `lab.exec(&lab.ra, &["iptables", "-t", "nat", "-L", "-v", "-n"])`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {}: {e}", args.join(" ")))
    }

    /// The namespaces of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        vec![
            self.inet.clone(),
            self.ra.clone(),
            self.rb.clone(),
            self.la.clone(),
            self.lb.clone(),
        ]
    }

    /// A node spec running in namespace `ns`, listening on `ip` with one listener per transport
    /// (fast heartbeats, like [`Spec::new`]).
    pub fn spec(&self, id: &str, ns: &str, ip: &str, transports: &[&str]) -> Spec {
        spec_in(id, ns, ip, transports)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_all(&self.created, "NAT lab");
    }
}

/// Two namespaces joined by one veth (`w0` on each side), without NAT: a "wire" whose loss and
/// rate the test sets. A is 10.9.0.1, B is 10.9.0.2. Removed on drop like a [`Lab`].
pub struct Wire {
    /// Side A's namespace.
    pub a: String,
    /// Side B's namespace.
    pub b: String,
    /// A's address.
    pub a_ip: String,
    /// B's address.
    pub b_ip: String,
    created: Vec<String>,
}

impl Wire {
    /// Builds the two namespaces and the veth between them.
    pub fn new() -> Wire {
        remove_stale();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let mut wire = Wire {
            a: format!("{prefix}-wa"),
            b: format!("{prefix}-wb"),
            a_ip: "10.9.0.1".into(),
            b_ip: "10.9.0.2".into(),
            created: Vec::new(),
        };
        for ns in [wire.a.clone(), wire.b.clone()] {
            run(&["ip", "netns", "add", &ns]);
            wire.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        veth(&wire.a, "w0", &wire.b, "w0");
        for ns in [&wire.a, &wire.b] {
            run(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                "dev",
                "w0",
                "gso_max_segs",
                "1",
            ]);
        }
        addr_up(&wire.a, "w0", "10.9.0.1/24");
        addr_up(&wire.b, "w0", "10.9.0.2/24");
        wire
    }

    /// Drops each packet arriving on either side with probability `p` (iptables `statistic`;
    /// this kernel has no netem), so loss is `p` each way. On arrival, not on departure: a
    /// sender's GSO batch (up to 64 segments in one buffer) is one packet to `OUTPUT`, and
    /// dropping it would lose dozens of datagrams at once; the veths segment every batch
    /// (`gso_max_segs 1`), so `INPUT` sees each datagram.
    pub fn lose(&self, p: f64) {
        let p = format!("{p}");
        for ns in [&self.a, &self.b] {
            in_ns(
                ns,
                &[
                    "iptables",
                    "-w",
                    "-A",
                    "INPUT",
                    "-i",
                    "w0",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Limits each side's sending to `rate` (a `tbf` rate such as `8mbit`).
    pub fn slow(&self, rate: &str) {
        for ns in [&self.a, &self.b] {
            in_ns(
                ns,
                &[
                    "tc", "qdisc", "add", "dev", "w0", "root", "tbf", "rate", rate, "burst",
                    "32kbit", "latency", "200ms",
                ],
            );
        }
    }

    /// Packets the loss rule dropped arriving on side `ns` so far.
    pub fn dropped(&self, ns: &str) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x",
            ])
            .output()
            .expect("iptables -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("statistic"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// A node spec running on side `ns` at `ip` (see [`Lab::spec`]).
    pub fn spec(&self, id: &str, ns: &str, ip: &str, transports: &[&str]) -> Spec {
        spec_in(id, ns, ip, transports)
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        remove_all(&self.created, "lab");
    }
}

/// A LAN: `n` host namespaces, each with one veth (`eth0`, 10.77.0.<i+1>/24) into a bridge that
/// lives in a namespace of its own, multicast flooded to every port (snooping off) and a
/// default route on each host (to an on-link gateway that does not exist), so that sending to
/// a multicast group has a route. Removed on drop like a [`Lab`].
pub struct Bridge {
    /// The host namespaces, in order.
    pub hosts: Vec<String>,
    /// Their addresses.
    pub ips: Vec<String>,
    created: Vec<String>,
}

impl Bridge {
    pub fn new(n: usize) -> Bridge {
        remove_stale();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let mut bridge = Bridge {
            hosts: Vec::new(),
            ips: Vec::new(),
            created: Vec::new(),
        };
        let sw = format!("{prefix}-sw");
        run(&["ip", "netns", "add", &sw]);
        bridge.created.push(sw.clone());
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip",
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{prefix}-h{i}");
            run(&["ip", "netns", "add", &ns]);
            bridge.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            veth(&sw, &port, &ns, "eth0");
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"]);
            run(&["ip", "-n", &sw, "link", "set", &port, "up"]);
            let ip = format!("10.77.0.{}", i + 1);
            addr_up(&ns, "eth0", &format!("{ip}/24"));
            run(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "10.77.0.254",
                "dev",
                "eth0",
            ]);
            bridge.hosts.push(ns);
            bridge.ips.push(ip);
        }
        bridge
    }

    /// A node spec on host `i`, listening on all addresses (so its beacon carries its ports)
    /// with one listener per transport, LAN discovery on and no configured peers.
    pub fn spec(&self, id: &str, i: usize, transports: &[&str]) -> Spec {
        let mut s = spec_in(id, &self.hosts[i], "0.0.0.0", transports);
        s.extra = serde_json::json!({ "lan_discovery": true });
        s
    }

    /// Runs `args` inside host namespace `i`, unchecked.
    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i]])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", self.hosts[i]))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        remove_all(&self.created, "LAN lab");
    }
}

/// A node spec in namespace `ns` listening on `ip`, one listener per transport.
fn spec_in(id: &str, ns: &str, ip: &str, transports: &[&str]) -> Spec {
    let mut s = Spec::new(id, transports[0]);
    s.listeners = transports
        .iter()
        .map(|t| (t.to_string(), super::free_port()))
        .collect();
    s.host = ip.into();
    s.netns = Some(ns.into());
    s
}

/// Removes the namespaces in `created` (newest first) after killing what runs in them.
fn remove_all(created: &[String], what: &str) {
    for ns in created.iter().rev() {
        kill_all_in(ns);
    }
    for ns in created.iter().rev() {
        if let Err(e) = try_run(&["ip", "netns", "del", ns]) {
            eprintln!("{what} cleanup: {e}");
        }
    }
}

/// SIGKILLs every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 1 && p != me)
    {
        // SAFETY: kill(2) on a pid that lives in this lab's namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Deletes the namespaces of labs whose test process no longer exists.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Lines look like "name" or "name (id: 3)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            // Another test process may be removing it at the same time.
            let _ = try_run(&["ip", "netns", "del", name]);
        }
    }
}

fn try_run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command; panics with its command line and stderr if it fails.
fn run(args: &[&str]) {
    if let Err(e) = try_run(args) {
        panic!("NAT lab setup: {e}");
    }
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full);
}

/// Turns on IPv4 forwarding in `ns` (sysctl is per network namespace).
fn forwarding(ns: &str) {
    in_ns(ns, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
}

/// A veth pair: `a_if` in namespace `a`, `b_if` in namespace `b` (created in place, never in the
/// test's own namespace, so interface names only need to be unique per namespace).
fn veth(a: &str, a_if: &str, b: &str, b_if: &str) {
    run(&[
        "ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
    ]);
}

fn addr_up(ns: &str, dev: &str, cidr: &str) {
    run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
    run(&["ip", "-n", ns, "link", "set", dev, "up"]);
}

fn route_default(ns: &str, via: &str) {
    run(&["ip", "-n", ns, "route", "add", "default", "via", via]);
}
