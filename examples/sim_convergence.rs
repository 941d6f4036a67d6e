//! Convergence of simulated msgtier networks (sans-io routers on a virtual clock), up to 500
//! nodes: for each shape, the virtual time until every node routes to every other, the
//! link-state adverts delivered by then, and the real time the simulation took.
//!
//! `cargo run --release --example sim_convergence` (a few seconds; figures in BENCHMARKS.md).

use std::time::Instant;

use msgtier::proto::router::sim::Net;

/// xorshift, for reproducible random graphs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Builds a network of `count` nodes in `shape`; answers it and its link count.
fn build(shape: &str, count: usize, seed: u64) -> (Net, usize) {
    let mut net = Net::new(seed);
    let n: Vec<usize> = (0..count).map(|i| net.add(&format!("n{i}"))).collect();
    let mut rng = Rng(seed * 7919 + 1);
    let mut links = 0;
    let mut link = |net: &mut Net, a: usize, b: usize, ms: u64| {
        net.connect(n[a], n[b], ms);
        links += 1;
    };
    match shape {
        "line" => (1..count).for_each(|i| link(&mut net, i - 1, i, 1)),
        "ring" => {
            (1..count).for_each(|i| link(&mut net, i - 1, i, 1));
            link(&mut net, count - 1, 0, 1);
        }
        "star" => (1..count).for_each(|i| link(&mut net, i, 0, 1)),
        _ => {
            for i in 1..count {
                let parent = rng.below(i);
                let ms = 1 + rng.below(5) as u64;
                link(&mut net, i, parent, ms);
            }
            for _ in 0..count {
                let (a, b) = (rng.below(count), rng.below(count));
                if a != b && net.links_between(n[a], n[b]).is_empty() {
                    let ms = 1 + rng.below(5) as u64;
                    link(&mut net, a, b, ms);
                }
            }
        }
    }
    (net, links)
}

fn main() {
    println!("| shape | nodes | links | virtual ms to full routes | adverts delivered | real ms |");
    println!("|---|---|---|---|---|---|");
    let cases = [
        ("line", 17),
        ("ring", 32),
        ("star", 100),
        ("star", 500),
        ("random", 50),
        ("random", 100),
        ("random", 200),
        ("random", 500),
    ];
    for (shape, count) in cases {
        let (mut net, links) = build(shape, count, 7);
        let start = Instant::now();
        let done = net.run_until(60_000, |n| n.converged());
        let real = start.elapsed().as_millis();
        let virt = if done {
            net.now_ms().to_string()
        } else {
            "> 60000".to_string()
        };
        println!(
            "| {shape} | {count} | {links} | {virt} | {} | {real} |",
            net.adverts_delivered
        );
    }
}
