//! Writes pictures of the quickstart pipeline: `graph.svg` (the user's
//! graph, name scopes as nested clusters), `plan.svg` (steps coloured by
//! device, values with liveness intervals and bytes) and `trace.json` (a
//! timeline of one run for Perfetto or chrome://tracing).
//!
//! ```sh
//! cargo run --example visualize -- --device auto --out-dir .
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ndarray::Array2;
use tensorgraph::viz::{self, Rendered};
use tensorgraph::{DType, Device, DotOptions, Graph, Value};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Where to write graph.svg, plan.svg and trace.json.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Picture format: svg, png or pdf.
    #[arg(long, default_value = "svg")]
    format: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = Instant::now();
    let options = tensorgraph::options(args.device)?;
    println!("{}", tensorgraph::describe(&options)?);

    let g = Graph::new();
    let shape = [64, 32];
    let out = g.scope("pipeline", |g| -> tensorgraph::Result<_> {
        let a = g.input("a", DType::F32, shape)?;
        let b = g.input("b", DType::F32, shape)?;
        let c = g.input("c", DType::F32, shape)?;
        let d = g.input("d", DType::F32, shape)?;
        let sum = g.scope("add", |g| g.scope("add", |_| a.add(&b)))?;
        // With a GPU present, the subtract branch is pinned there, so the
        // plan shows two devices and the transfers between them.
        let gpu = options.backends.iter().any(|b| b.device() == Device::Gpu);
        let here = if gpu { Device::Gpu } else { Device::Auto };
        let diff = g.scope("subtract", |g| g.on_device(here, |_| c.sub(&d)?.abs()))?;
        g.scope("multiply", |_| sum.mul(&c)?.mul(&diff))
    })?;
    let plan = g.compile(&[&out], &options)?;
    let feeds: Vec<(&str, Value)> = ["a", "b", "c", "d"]
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, Value::from(Array2::from_elem(shape, i as f32 + 1.0))))
        .collect();
    let (_, timeline) = plan.run_traced(&feeds)?;

    std::fs::create_dir_all(&args.out_dir)?;
    for (name, dot) in [
        ("graph", g.to_dot(&DotOptions::full())),
        ("plan", plan.to_dot()),
    ] {
        let path = args.out_dir.join(name).with_extension(&args.format);
        match viz::render(&dot, path)? {
            Rendered::Image(p) => println!("wrote {}", p.display()),
            Rendered::DotOnly { dot, hint } => println!("wrote {} ({hint})", dot.display()),
        }
    }
    let trace = args.out_dir.join("trace.json");
    std::fs::write(&trace, timeline.to_chrome_json())?;
    println!(
        "wrote {} ({} step slices); done in {:.2?}",
        trace.display(),
        timeline.steps().count(),
        started.elapsed()
    );
    Ok(())
}
