//! f32 matmul: tensorgraph on each device vs ndarray's `dot`, same inputs,
//! same run. Throughput is reported in FLOP/s (2 n^3 per product).

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, Ix2};
use tensorgraph::{DType, Graph, Value};

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for &n in &[256usize, 1024, 2048] {
        let a = common::random(&[n, n], 1);
        let b = common::random(&[n, n], 2);
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.measurement_time(Duration::from_secs(if n >= 2048 { 8 } else { 4 }));

        let a2: Array2<f32> = a.clone().into_dimensionality::<Ix2>().expect("2-D");
        let b2: Array2<f32> = b.clone().into_dimensionality::<Ix2>().expect("2-D");
        group.bench_with_input(BenchmarkId::new("ndarray-dot", n), &n, |bench, _| {
            bench.iter(|| black_box(a2.dot(&b2)))
        });

        for (device, label) in common::devices() {
            if device == tensorgraph::Device::Gpu && n >= 1024 && common::software_gpu() {
                eprintln!("matmul {n} on a software GPU skipped");
                continue;
            }
            let g = Graph::new();
            let x = g.input("a", DType::F32, [n, n]).expect("input");
            let y = g.input("b", DType::F32, [n, n]).expect("input");
            let z = x.matmul(&y).expect("matmul");
            let options = tensorgraph::options(device).expect("device");
            let plan = g.compile(&[&z], &options).expect("compile");
            let feeds = [("a", Value::from(a.clone())), ("b", Value::from(b.clone()))];
            // `run` returns the downloaded result, so GPU timings include
            // the device sync.
            group.bench_with_input(BenchmarkId::new(label, n), &n, |bench, _| {
                bench.iter(|| black_box(plan.run(&feeds).expect("run")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
