//! Quickstart: a two-layer MLP forward pass on random data and a nested
//! add/subtract/multiply pipeline, on the device of your choice.
//!
//! ```sh
//! cargo run --release --example quickstart -- --device auto
//! RUST_LOG=tensorgraph=debug cargo run --example quickstart -- --device cpu
//! ```

use std::time::Instant;

use clap::Parser;
use ndarray::{Array, Array2, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tensorgraph::{DType, Device, Graph, Value};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// cpu, gpu or auto (the GPU when an adapter exists, else the CPU).
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Batch size of the MLP input.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

fn random(rng: &mut StdRng, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
    Array::from_shape_fn((rows, cols), |_| rng.random_range(-scale..scale))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_target(false)
        .init();
    let args = Args::parse();
    let options = tensorgraph::options(args.device)?;
    println!("{}", tensorgraph::describe(&options)?);

    // --- a two-layer MLP: relu(x W1 + b1) W2 + b2, softmax over classes ---
    let mut rng = StdRng::seed_from_u64(7);
    let (n, d_in, d_hidden, d_out) = (args.batch, 784, 512, 10);
    let w1 = random(&mut rng, d_in, d_hidden, 0.05);
    let b1 = random(&mut rng, 1, d_hidden, 0.1);
    let w2 = random(&mut rng, d_hidden, d_out, 0.05);
    let b2 = random(&mut rng, 1, d_out, 0.1);
    let x = random(&mut rng, n, d_in, 1.0);

    let start = Instant::now();
    let g = Graph::new();
    let probs = g.scope("mlp", |g| -> tensorgraph::Result<_> {
        let xin = g.input("x", DType::F32, [n, d_in])?;
        let h = xin
            .matmul(&g.constant(w1.clone()))?
            .add(&g.constant(b1.clone()))?
            .relu()?
            .named("hidden");
        let logits = h
            .matmul(&g.constant(w2.clone()))?
            .add(&g.constant(b2.clone()))?;
        logits.softmax(-1)
    })?;
    let plan = g.compile(&[&probs], &options)?;
    let compiled = start.elapsed();

    let feeds = [("x", Value::from(x.clone()))];
    let start = Instant::now();
    let (out, stats) = plan.run_with_stats(&feeds)?;
    let first_run = start.elapsed();
    let start = Instant::now();
    let runs = 10;
    for _ in 0..runs {
        plan.run(&feeds)?;
    }
    let per_run = start.elapsed() / runs;

    let probs = out[0].as_f32().ok_or("mlp output is not f32")?;
    // Check against plain ndarray.
    let h = (x.dot(&w1) + &b1).mapv(|v| v.max(0.0));
    let logits = h.dot(&w2) + &b2;
    let mut max_err = 0.0f32;
    for (row, want) in probs.axis_iter(Axis(0)).zip(logits.axis_iter(Axis(0))) {
        let m = want.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let e = want.mapv(|v| (v - m).exp());
        let s = e.sum();
        for (got, e) in row.iter().zip(e.iter()) {
            max_err = max_err.max((got - e / s).abs());
        }
    }
    println!(
        "mlp {n}x{d_in} -> {d_hidden} -> {d_out}: {} steps, compiled in {compiled:.2?}, first run {first_run:.2?}, {per_run:.2?} per run after",
        plan.steps().len()
    );
    for backend in plan.backends() {
        let steps: Vec<&str> = plan
            .steps()
            .iter()
            .filter(|s| plan.step_device(s) == backend.device() && !s.kernel.op.is_source())
            .map(|s| s.name.as_str())
            .collect();
        println!(
            "  on {} ({}): {}",
            backend.device(),
            backend.name(),
            steps.join(", ")
        );
    }
    println!(
        "  memory: planned peak {} KiB, measured peak {} KiB, {} KiB if nothing were freed",
        plan.planned_peak_bytes() / 1024,
        stats.peak_bytes.iter().sum::<usize>() / 1024,
        plan.planned_memory()
            .iter()
            .map(|m| m.total_bytes)
            .sum::<usize>()
            / 1024,
    );
    println!(
        "  row 0 class probabilities: {:.3}",
        probs.index_axis(Axis(0), 0)
    );
    println!("  max |ours - ndarray| = {max_err:.2e}");

    // --- the nested pipeline: multiply(add(a, b), c, subtract(c, d)) ---
    let g = Graph::new();
    let shape = [4, 3];
    let out = g.scope("pipeline", |g| -> tensorgraph::Result<_> {
        let a = g.input("a", DType::F32, shape)?;
        let b = g.input("b", DType::F32, shape)?;
        let c = g.input("c", DType::F32, shape)?;
        let d = g.input("d", DType::F32, shape)?;
        let sum = g.scope("add", |_| a.add(&b))?;
        let diff = g.scope("subtract", |_| c.sub(&d))?;
        g.scope("multiply", |_| sum.mul(&c)?.mul(&diff))
    })?;
    let plan = g.compile(&[&out], &options)?;
    let arrays: Vec<Array2<f32>> = (0..4).map(|_| random(&mut rng, 4, 3, 2.0)).collect();
    let feeds: Vec<(&str, Value)> = ["a", "b", "c", "d"]
        .into_iter()
        .zip(&arrays)
        .map(|(k, v)| (k, Value::from(v.clone())))
        .collect();
    let start = Instant::now();
    let result = plan.run(&feeds)?;
    let took = start.elapsed();
    let [a, b, c, d] = [&arrays[0], &arrays[1], &arrays[2], &arrays[3]];
    let want = (a + b) * c * (c - d);
    let got = result[0].as_f32().ok_or("pipeline output is not f32")?;
    let err = (got - &want.into_dyn())
        .mapv(f32::abs)
        .fold(0.0f32, |m, &v| m.max(v));
    println!(
        "pipeline (a + b) * c * (c - d) on {shape:?}: {} steps in {took:.2?}, max |ours - ndarray| = {err:.2e}",
        plan.steps().len()
    );
    println!("  result row 0: {:.3}", got.index_axis(Axis(0), 0));
    Ok(())
}
