//! The `tracing` trace of a run: a `run <node>` line per step, a
//! `free %K after <node>` line per freed value, and a `pool: reuse` line
//! per output drawn from a backend's pool of freed storage. Alone in its
//! binary because it installs a global subscriber (backends trace from
//! their own worker threads, which a thread-local subscriber would not see).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use common::*;
use tensorgraph::{DType, Device, Graph, Value};

/// An in-memory log the fmt subscriber writes into.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The log of this binary's one subscriber (`tensorgraph=debug`), set up
/// by the first test to ask, and a guard that keeps the other tests from
/// writing into it until the caller is done: the lines after a mark taken
/// under the guard are the caller's own.
fn log() -> (&'static Log, MutexGuard<'static, ()>) {
    static LOG: OnceLock<Log> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let log = LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tensorgraph=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only subscriber of this binary");
        log
    });
    (log, guard)
}

#[test]
fn run_and_free_lines_at_debug_level() {
    let (log, _one_at_a_time) = log();
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("input");
        let w = g.input("w", DType::F32, [8, 3]).expect("input");
        let mm = x.matmul(&w).expect("matmul");
        let y = mm.relu().and_then(|r| r.sum(&[1], false)).expect("builds");
        // Node by node, so each op is its own step (fusion would merge the
        // relu into the matmul).
        let mut options = tensorgraph::options(d).expect("device");
        options.passes = tensorgraph::PassOptions::none();
        let plan = g.compile(&[&y], &options).expect("compile");
        let before = log.text().len();
        plan.run(&[
            ("x", Value::F32(rand_f32(1, &[4, 8], -1.0, 1.0))),
            ("w", Value::F32(rand_f32(2, &[8, 3], -1.0, 1.0))),
        ])
        .expect("run");
        let text = log.text()[before..].to_string();
        let mm_name = mm.name();
        assert!(mm_name.starts_with("matmul_"), "auto name {mm_name}");
        assert!(
            text.contains(&format!("run {mm_name}")),
            "{d}: no `run {mm_name}` in:\n{text}"
        );
        let mut frees = 0;
        for step in plan.steps() {
            if !step.kernel.op.is_source() {
                let line = format!("run {}", step.name);
                assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
            }
            // A donor written in place is taken over, not freed.
            let donor = step.in_place.map(|k| step.inputs[k]);
            for v in &step.free_after {
                let line = match donor {
                    Some(donor) if donor == *v => format!(
                        "reuse {v} in place for {} at {}",
                        step.outputs[0], step.name
                    ),
                    _ => format!("free {v} after {}", step.name),
                };
                assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
                frees += 1;
            }
        }
        // The lone relu writes over the dying product, on every device.
        let relu = plan
            .steps()
            .iter()
            .find(|s| s.kernel.op.name() == "relu")
            .expect("relu step");
        assert_eq!(relu.in_place, Some(0), "{d}: relu in place");
        // x, w, the matmul and the relu are freed (the product by being
        // taken over); the output is not.
        assert!(frees >= 4, "{d}: {frees} frees planned");
        let mm_frees = plan
            .steps()
            .iter()
            .find(|s| s.name == mm_name)
            .map(|s| s.free_after.len())
            .expect("matmul step");
        assert_eq!(mm_frees, 2, "{d}: x and w die at the matmul");

        // A fused step that writes into a dying buffer (the product of a
        // matmul and a reduction, which no epilogue absorbs) says so.
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("input");
        let w = g.input("w", DType::F32, [8, 3]).expect("input");
        let mm = x
            .matmul(&w)
            .and_then(|p| p.sum(&[1], true))
            .expect("matmul, sum");
        let y = (&mm * 2.0 + 1.0).relu().expect("fusable");
        let Some(plan) = compile_on(d, &g, &[&y]) else {
            return;
        };
        let step = plan
            .steps()
            .iter()
            .find(|s| s.in_place.is_some())
            .expect("the fused step runs in place");
        let donor = step.inputs[step.in_place.expect("in place")];
        let line = format!(
            "reuse {donor} in place for {} at {}",
            step.outputs[0], step.name
        );
        let before = log.text().len();
        plan.run(&[
            ("x", Value::F32(rand_f32(1, &[4, 8], -1.0, 1.0))),
            ("w", Value::F32(rand_f32(2, &[8, 3], -1.0, 1.0))),
        ])
        .expect("run");
        let text = log.text()[before..].to_string();
        assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
        assert!(
            !text.contains(&format!("free {donor} ")),
            "{d}: an in-place donor is taken over, not freed:\n{text}"
        );
    });
}

/// A plan run a second time draws its outputs from the storage its first
/// run freed, and says so, on each device in its own terms.
#[test]
fn pool_reuse_lines_at_debug_level() {
    let (log, _one_at_a_time) = log();
    on_every_device(|d| {
        // 17 elements: the smallest of its CPU size class (17..=32), so
        // every kept vector of the class holds it without growing.
        let g = Graph::new();
        let x = g.input("x", DType::F32, [17]).expect("input");
        // `a` dies at a reduction, which cannot write into it: its storage
        // goes back to the pool, not to an in-place successor.
        let a = x.exp().expect("exp").named("pool_a");
        let y = a.sum(&[0], true).expect("sum").named("pool_y");
        let mut options = tensorgraph::options(d).expect("device");
        options.passes = tensorgraph::PassOptions::none();
        let plan = g.compile(&[&y], &options).expect("compile");
        let feed = rand_f32(3, &[17], -2.0, 2.0);
        let want = feed
            .mapv(f32::exp)
            .sum_axis(ndarray::Axis(0))
            .insert_axis(ndarray::Axis(0));
        let run = || {
            let out = plan
                .run(&[("x", Value::F32(feed.clone()))])
                .expect("run")
                .swap_remove(0);
            assert_close(&f32_of(out), &want, 1e-5, 1e-6, &format!("{d}: output"));
        };
        run();
        let before = log.text().len();
        run();
        let text = log.text()[before..].to_string();
        let line = match d {
            Device::Cpu => "pool: reuse 17 x f32 for pool_a".to_string(),
            // 68 bytes round up to a 128-byte buffer.
            Device::Gpu => "pool: reuse 128-byte buffer for f32[17] (68 bytes)".to_string(),
            Device::Auto => unreachable!("on_every_device names concrete devices"),
        };
        assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
    });
}

/// A kept CPU vector of the right size class but too small a capacity is
/// reallocated as it grows: the trace says so instead of calling it reuse.
#[test]
fn pool_regrow_is_not_called_reuse() {
    let (log, _one_at_a_time) = log();
    // 4100 and 8000 elements share a size class (4097..=8192), which no
    // other test here uses: `a`'s storage is the only vector of the class
    // kept when `c`, needing more, takes it.
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4100]).expect("input");
    let y = g.input("y", DType::F32, [8000]).expect("input");
    let a = x.exp().expect("exp").named("regrow_a");
    let s = a.sum(&[0], false).expect("sum").named("regrow_s");
    let c = y.add(&s).expect("add").named("regrow_c");
    let mut options = tensorgraph::options(Device::Cpu).expect("the CPU");
    options.passes = tensorgraph::PassOptions::none();
    let plan = g.compile(&[&c], &options).expect("compile");
    let xs = rand_f32(4, &[4100], -1.0, 1.0);
    let ys = rand_f32(5, &[8000], -1.0, 1.0);
    let before = log.text().len();
    let out = plan
        .run(&[("x", Value::F32(xs.clone())), ("y", Value::F32(ys.clone()))])
        .expect("run")
        .swap_remove(0);
    let text = log.text()[before..].to_string();
    let total = xs.mapv(f32::exp).sum();
    let want = ys.mapv(|v| v + total);
    assert_close(&f32_of(out), &want, 1e-5, 1e-4, "y + sum(exp(x))");
    let regrow = "pool: regrow 4100 to 8000 x f32 for regrow_c (reallocated)";
    assert!(text.contains(regrow), "no `{regrow}` in:\n{text}");
    assert!(
        !text.contains("pool: reuse 8000 x f32 for regrow_c"),
        "a reallocation reported as reuse:\n{text}"
    );
}
