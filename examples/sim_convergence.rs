//! Convergence of simulated msgtier networks (sans-io routers on a virtual clock), up to 500
//! nodes: for each shape, the virtual time until every node routes to every other, the
//! link-state adverts delivered by then, and the real time the simulation took.
//!
//! `cargo run --release --example sim_convergence` (a few seconds; figures in BENCHMARKS.md).

use std::time::Instant;

use msgtier::proto::router::sim::Net;

/// Builds a network of `count` nodes in `shape`; answers it and its link count.
fn build(shape: &str, count: usize, seed: u64) -> (Net, usize) {
    if shape == "random" {
        return Net::random_graph(count, seed);
    }
    let mut net = Net::new(seed);
    let n: Vec<usize> = (0..count).map(|i| net.add(&format!("n{i}"))).collect();
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
        _ => (1..count).for_each(|i| link(&mut net, i, 0, 1)), // star
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
