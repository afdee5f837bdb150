//! The nested pipeline `multiply(add(a, b), c, subtract(c, d))`, where the
//! outer add is itself built from an inner add, with a name scope for each
//! level of nesting: the names show in errors, traces and DOT output.
//!
//! ```sh
//! cargo run --example pipeline -- --device auto --n 1000
//! ```

use std::time::Instant;

use clap::Parser;
use ndarray::{Array, Array2};
use tensorgraph::{DType, Device, Graph, Tensor, Value};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Rows and columns of each operand.
    #[arg(long, default_value_t = 512)]
    n: usize,
}

/// `add(a, b)`: an outer scope around the inner add that computes it, so
/// the inner add is drawn inside add, inside pipeline.
fn add(g: &Graph, a: &Tensor, b: &Tensor) -> tensorgraph::Result<Tensor> {
    g.scope("add", |g| g.scope("add", |_| a.add(b)))
}

fn pipeline(g: &Graph, n: usize) -> tensorgraph::Result<Tensor> {
    g.scope("pipeline", |g| {
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|k| g.input(k, DType::F32, [n, n]));
        let (a, b, c, d) = (a?, b?, c?, d?);
        let sum = add(g, &a, &b)?;
        let diff = g.scope("subtract", |_| c.sub(&d))?;
        g.scope("multiply", |_| sum.mul(&c)?.mul(&diff))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let n = args.n;
    let options = tensorgraph::options(args.device)?;
    let started = Instant::now();
    let g = Graph::new();
    let out = pipeline(&g, n)?;
    let plan = g.compile(&[&out], &options)?;
    let compiled = started.elapsed();

    let arrays: Vec<Array2<f32>> = (0..4)
        .map(|k| Array::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 3 + k) % 11) as f32 - 5.0))
        .collect();
    let feeds: Vec<(&str, Value)> = ["a", "b", "c", "d"]
        .into_iter()
        .zip(&arrays)
        .map(|(k, v)| (k, Value::from(v.clone())))
        .collect();
    let start = Instant::now();
    let result = plan.run(&feeds)?;
    let ran = start.elapsed();

    let [a, b, c, d] = [&arrays[0], &arrays[1], &arrays[2], &arrays[3]];
    let want = (a + b) * c * (c - d);
    let got = result[0].as_f32().ok_or("output is not f32")?;
    let max_err = (got - &want.into_dyn())
        .mapv(f32::abs)
        .fold(0.0f32, |m, &v| m.max(v));

    println!("{}", tensorgraph::describe(&options)?);
    for step in plan.steps() {
        let node = g
            .node(step.node)
            .map(|n| n.scope.join("/"))
            .unwrap_or_default();
        println!(
            "  {:<14} {:<10} on {:<4} in scope {node}",
            step.name,
            step.kernel.op.name(),
            plan.step_device(step)
        );
    }
    println!(
        "pipeline on {n}x{n}: compiled in {compiled:.2?}, ran in {ran:.2?}; max |ours - ndarray| = {max_err:.2e}"
    );
    Ok(())
}
