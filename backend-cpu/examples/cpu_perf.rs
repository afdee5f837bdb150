//! Quick timings of the CPU backend: per-node overhead of a 10,000-op chain
//! of tiny ops, f32 matmul against ndarray's `dot`, and a few large
//! elementwise and reduction kernels. Run with `--release`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, Ix2, IxDyn};
use tensorgraph_core::{CompileOptions, DType, Device, Graph, Plan, Value};
use tensorgraph_cpu::CpuBackend;

fn random(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s % 2000) as f32 / 1000.0 - 1.0
    })
}

/// Best time of `f` over about `budget`.
fn best(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < budget && runs < 1000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn run(plan: &Plan, feeds: &[(&str, Value)]) {
    if let Err(e) = plan.run(feeds) {
        eprintln!("run failed: {e}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let backend = Arc::new(CpuBackend::with_threads(threads));
    let options = CompileOptions::new(Device::Cpu, vec![backend]);
    let budget = Duration::from_secs(2);
    println!("cpu backend, {threads} threads");

    // Per-node overhead.
    let g = Graph::new();
    let mut t = g.input("x", DType::F32, [4])?;
    let (one, half) = (g.scalar(1.0), g.scalar(0.5));
    for i in 0..10_000 {
        t = match i % 4 {
            0 => t.add(&one),
            1 => t.mul(&half),
            2 => t.neg(),
            _ => t.abs(),
        }?;
    }
    let plan = g.compile(&[&t], &options)?;
    let feeds = [("x", Value::from(ndarray::arr1(&[1.0f32, -2.0, 3.0, 0.5])))];
    let d = best(budget, || run(&plan, &feeds));
    println!(
        "chain of 10k tiny ops: {:.3} us/node",
        d.as_secs_f64() * 1e6 / 10_000.0
    );

    let sizes: Vec<usize> = match std::env::args().nth(2) {
        Some(n) => vec![n.parse()?],
        None => vec![256, 1024, 2048],
    };
    for &n in &sizes {
        let (a, b) = (random(&[n, n], 1), random(&[n, n], 2));
        let (a2, b2) = (
            a.clone().into_dimensionality::<Ix2>()?,
            b.clone().into_dimensionality::<Ix2>()?,
        );
        let dot = best(budget, || {
            std::hint::black_box(a2.dot(&b2));
        });
        let g = Graph::new();
        let x = g.input("a", DType::F32, [n, n])?;
        let y = g.input("b", DType::F32, [n, n])?;
        let plan = g.compile(&[&x.matmul(&y)?], &options)?;
        let feeds = [("a", Value::from(a)), ("b", Value::from(b))];
        let ours = best(budget, || run(&plan, &feeds));
        println!(
            "matmul {n}: ndarray dot {:.2} ms, cpu backend {:.2} ms ({:.2}x)",
            dot.as_secs_f64() * 1e3,
            ours.as_secs_f64() * 1e3,
            dot.as_secs_f64() / ours.as_secs_f64()
        );
    }

    let n = 4 << 20;
    let (a, b) = (random(&[n], 3), random(&[n], 4));
    let g = Graph::new();
    let x = g.input("a", DType::F32, [n])?;
    let y = g.input("b", DType::F32, [n])?;
    let plan = g.compile(&[&x.add(&y)?], &options)?;
    let feeds = [("a", Value::from(a.clone())), ("b", Value::from(b.clone()))];
    let ours = best(budget, || run(&plan, &feeds));
    let base = best(budget, || {
        std::hint::black_box(&a + &b);
    });
    println!(
        "add 4M: ndarray {:.2} ms, cpu backend {:.2} ms (incl. uploads/download)",
        base.as_secs_f64() * 1e3,
        ours.as_secs_f64() * 1e3
    );

    let m = random(&[2048, 2048], 5);
    for axes in [vec![1isize], vec![0], vec![]] {
        let g = Graph::new();
        let x = g.input("m", DType::F32, [2048, 2048])?;
        let plan = g.compile(&[&x.sum(&axes, false)?], &options)?;
        let feeds = [("m", Value::from(m.clone()))];
        let ours = best(budget, || run(&plan, &feeds));
        println!(
            "sum {axes:?} of 2048x2048: {:.2} ms",
            ours.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
