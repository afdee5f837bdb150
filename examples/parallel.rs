//! Independent branches run at the same time. The DAG
//!
//! ```text
//! A(10) -> B, C, D;  E(C, D);  F(B);  G(F, C, E)
//! ```
//!
//! has seven nodes, each a custom op that sleeps one time unit. Run one
//! after another it takes 7 units; the executor runs ready nodes together,
//! so it takes about 4 units: the critical path A -> C -> E -> G.
//!
//! ```sh
//! cargo run --release --example parallel -- --unit-ms 100
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use tensorgraph::{DType, Device, EventKind, Graph, Tensor, TensorType, Value};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// cpu, gpu or auto (custom ops always run on the CPU).
    #[arg(long, default_value = "auto")]
    device: Device,
    /// One time unit, in milliseconds.
    #[arg(long, default_value_t = 100)]
    unit_ms: u64,
}

/// A node that sleeps one unit, then returns 1 + the sum of its inputs.
fn node(g: &Graph, name: &str, inputs: &[&Tensor], unit: Duration) -> tensorgraph::Result<Tensor> {
    let ty = TensorType::new(DType::F32, []);
    let out = g.custom(name, inputs, vec![ty], move |xs| {
        std::thread::sleep(unit);
        let mut total = 1.0f32;
        for x in xs {
            total += x.as_f32().ok_or("expected f32")?.sum();
        }
        Ok(vec![Value::from(total)])
    })?;
    out.into_iter().next().ok_or(tensorgraph::Error::NoOutputs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let unit = Duration::from_millis(args.unit_ms);
    let options = tensorgraph::options(args.device)?;
    println!(
        "{} (custom ops always run on the CPU)",
        tensorgraph::describe(&options)?
    );

    let g = Graph::new();
    let ten = g.scalar(10.0);
    let a = node(&g, "A", &[&ten], unit)?;
    let b = node(&g, "B", &[&a], unit)?;
    let c = node(&g, "C", &[&a], unit)?;
    let d = node(&g, "D", &[&a], unit)?;
    let e = node(&g, "E", &[&c, &d], unit)?;
    let f = node(&g, "F", &[&b], unit)?;
    let out = node(&g, "G", &[&f, &c, &e], unit)?;
    let plan = g.compile(&[&out], &options)?;

    let start = Instant::now();
    let (result, timeline) = plan.run_traced(&[])?;
    let wall = start.elapsed();
    let value = result[0].as_f32().and_then(|a| a.iter().next().copied());
    // A = 11; B = C = D = 12; E = 25; F = 13; G = 1 + 13 + 12 + 25 = 51.
    println!("G = {value:?} (expected 51)");

    let units = |us: f64| us / 1e3 / args.unit_ms as f64;
    println!("timeline (time units of {} ms):", args.unit_ms);
    let mut slices: Vec<_> = timeline
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Step && e.op == "custom")
        .collect();
    slices.sort_by(|x, y| x.start_us.total_cmp(&y.start_us));
    for s in &slices {
        let from = units(s.start_us);
        let to = units(s.start_us + s.duration_us);
        let bar: String = (0..8)
            .map(|t| {
                let t = t as f64 + 0.5;
                if t >= from && t < to { '#' } else { '.' }
            })
            .collect();
        println!(
            "  {:<2} {bar}  {from:4.2} .. {to:4.2}  on {}",
            s.name, s.track
        );
    }
    println!(
        "wall time {wall:.2?} = {:.2} units; serial would take 7 units, the critical path is 4",
        wall.as_secs_f64() * 1e3 / args.unit_ms as f64
    );
    Ok(())
}
