//! Property tests: random small graphs (inputs of random shapes, random
//! chains of elementwise, broadcasting, reduction, layout and matmul ops
//! that type-check) give the same results with every pass on as with
//! every pass off on the CPU, and the same on every other device.
//!
//! Values stay in safe ranges: logarithms and square roots see `|x| + 1`,
//! exponentials `tanh(x)`, divisors `|x| + 1`, and a result whose bound
//! grows past [`SQUASH`] goes through `tanh`. Every op used is continuous,
//! so rounding differences stay small; the tolerance scales with the
//! largest bound in the graph.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tensorgraph::core::PassOptions;
use tensorgraph::{DType, Device, Error, Graph, Plan, ReduceOp, SplitSpec, Tensor, UnaryOp, Value};

/// Results bounded above this in magnitude are squashed with `tanh`.
const SQUASH: f32 = 8.0;

/// One generated op: what it is, which pool tensors it reads, a parameter,
/// and whether it is built twice (identical builds, for CSE).
#[derive(Debug, Clone)]
struct OpSpec {
    kind: u8,
    a: u8,
    b: u8,
    c: u8,
    twice: bool,
}

/// A generated program: input shapes, ops, which results to request, and
/// the seed of the input data.
#[derive(Debug, Clone)]
struct Program {
    inputs: Vec<Vec<usize>>,
    ops: Vec<OpSpec>,
    requested: Vec<u8>,
    seed: u64,
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=3, 0..=3)
}

fn program() -> impl Strategy<Value = Program> {
    let op = (
        0u8..13,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(kind, a, b, c, twice)| OpSpec {
            kind,
            a,
            b,
            c,
            twice,
        });
    (
        prop::collection::vec(shape(), 1..=3),
        prop::collection::vec(op, 1..24),
        prop::collection::vec(any::<u8>(), 0..=3),
        any::<u64>(),
    )
        .prop_map(|(inputs, ops, requested, seed)| Program {
            inputs,
            ops,
            requested,
            seed,
        })
}

/// A tensor of the pool with a bound on the magnitude of its elements.
#[derive(Clone)]
struct Bounded {
    t: Tensor,
    bound: f32,
}

fn bounded(t: Tensor, bound: f32) -> Bounded {
    Bounded { t, bound }
}

/// `|x| + 1`: at least one, for logarithms, roots, bases and divisors.
fn abs1(x: &Tensor) -> tensorgraph::Result<Tensor> {
    x.abs().map(|a| &a + 1.0)
}

/// Builds one op on the pool, or `None` when the operands do not
/// type-check for it (the builder's error discards the op).
fn build(g: &Graph, spec: &OpSpec, pool: &[Bounded], seed: u64) -> Option<Vec<Bounded>> {
    // Mostly the newest tensors, so ops chain rather than fan out.
    let pick = |i: u8| {
        let back = if i < 192 { i as usize % 3 } else { i as usize };
        &pool[pool.len() - 1 - back % pool.len()]
    };
    let (x, y) = (pick(spec.a), pick(spec.b));
    let (xt, bx) = (&x.t, x.bound);
    let rank = xt.shape().rank();
    let one = |r: tensorgraph::Result<Tensor>, bound: f32| r.ok().map(|t| vec![bounded(t, bound)]);
    match spec.kind {
        0 => {
            let op = UnaryOp::ALL[spec.c as usize % UnaryOp::ALL.len()];
            match op {
                UnaryOp::Exp => one(xt.tanh().and_then(|t| t.exp()), 3.0),
                UnaryOp::Log => one(abs1(xt).and_then(|t| t.log()), (bx + 1.0).ln().max(1.0)),
                UnaryOp::Sqrt => one(abs1(xt).and_then(|t| t.sqrt()), (bx + 1.0).sqrt()),
                UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Sin | UnaryOp::Cos => {
                    one(xt.apply_unary(op), 1.0)
                }
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => one(xt.apply_unary(op), bx),
            }
        }
        1 => {
            let by = y.bound;
            match spec.c % 7 {
                0 => one(xt.add(&y.t), bx + by),
                1 => one(xt.sub(&y.t), bx + by),
                2 => one(xt.mul(&y.t), bx * by),
                3 => one(xt.maximum(&y.t), bx.max(by)),
                4 => one(xt.minimum(&y.t), bx.max(by)),
                5 => one(abs1(&y.t).and_then(|d| xt.div(&d)), bx),
                _ => one(
                    abs1(xt).and_then(|base| y.t.tanh().and_then(|e| base.pow(&e))),
                    bx + 1.0,
                ),
            }
        }
        2 => {
            // A scalar constant, often an identity: x*1, 1*x, x+0, x-0, x/1.
            let k = [0.0f32, 1.0, 2.0, -1.0, 0.5][spec.c as usize % 5];
            let c = g.scalar(k);
            let left = spec.b.is_multiple_of(2);
            match (spec.c / 5) % 4 {
                0 if left => one(c.add(xt), bx + k.abs()),
                0 => one(xt.add(&c), bx + k.abs()),
                1 => one(xt.sub(&c), bx + k.abs()),
                2 if left => one(c.mul(xt), bx * k.abs()),
                2 => one(xt.mul(&c), bx * k.abs()),
                _ if k != 0.0 => one(xt.div(&c), bx / k.abs()),
                _ => one(xt.maximum(&c), bx),
            }
        }
        3 => {
            // A constant of random shape: with constant operands, whole
            // subgraphs fold.
            let dims: Vec<usize> = (0..spec.c % 4)
                .map(|i| 1 + ((spec.b >> (2 * i)) % 3) as usize)
                .collect();
            let c = g.constant(rand_f32(seed ^ u64::from(spec.b), &dims, -2.0, 2.0));
            Some(vec![bounded(c, 2.0)])
        }
        4 => {
            let op = ReduceOp::ALL[spec.c as usize % 4];
            let keep = spec.c & 4 != 0;
            let axes: Vec<isize> = if rank == 0 || spec.c & 8 != 0 {
                Vec::new()
            } else {
                vec![(spec.b as usize % rank) as isize]
            };
            let bound = match op {
                ReduceOp::Sum => bx * xt.shape().numel() as f32,
                ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min => bx,
            };
            one(xt.apply_reduce(op, &axes, keep), bound)
        }
        5 => {
            let dims: Vec<isize> = xt.shape().dims().iter().map(|&d| d as isize).collect();
            let to: Vec<isize> = match spec.c % 4 {
                0 => vec![-1],
                1 => dims.iter().rev().copied().collect(),
                2 => std::iter::once(1).chain(dims.iter().copied()).collect(),
                _ => dims.iter().copied().filter(|&d| d != 1).collect(),
            };
            one(xt.reshape(&to), bx)
        }
        6 => {
            let mut perm: Vec<isize> = (0..rank as isize).collect();
            if spec.c.is_multiple_of(2) {
                perm.reverse();
            } else if rank > 0 {
                perm.rotate_left(spec.b as usize % rank);
            }
            one(xt.permute(&perm), bx)
        }
        7 => {
            let yt = &y.t;
            let k = xt.shape().dims().last().copied().unwrap_or(1) as f32;
            let m = xt
                .matmul(yt)
                .or_else(|_| yt.transpose(-1, -2).and_then(|t| xt.matmul(&t)));
            one(m, bx * y.bound * k)
        }
        8 => one(xt.neg().and_then(|t| t.neg()), bx),
        9 => {
            if rank == 0 {
                return None;
            }
            let axis = (spec.c as usize % rank) as isize;
            one(
                g.concat(&[xt, &y.t], axis)
                    .or_else(|_| g.concat(&[xt, xt], axis)),
                bx.max(y.bound),
            )
        }
        10 => {
            if rank == 0 {
                return None;
            }
            let axis = spec.c as usize % rank;
            let dim = xt.shape().dims()[axis] as isize;
            let step = 1 + (spec.b % 2) as isize;
            one(
                xt.slice_step(axis as isize, (spec.b / 2 % 2) as isize, dim, step),
                bx,
            )
        }
        11 => {
            if rank == 0 {
                return None;
            }
            let axis = spec.c as usize % rank;
            let dim = xt.shape().dims()[axis];
            let parts = xt.split(axis as isize, SplitSpec::Parts(dim)).ok()?;
            Some(parts.into_iter().map(|t| bounded(t, bx)).collect())
        }
        _ => {
            let mut to = vec![2];
            to.extend_from_slice(xt.shape().dims());
            one(xt.broadcast_to(to), bx)
        }
    }
}

/// A built program: the graph, what to request, and the tolerance.
struct Built {
    g: Graph,
    outputs: Vec<Tensor>,
    feeds: Vec<(String, Value)>,
    largest_bound: f32,
    ops_built: usize,
}

fn build_program(p: &Program) -> Built {
    let g = Graph::new();
    let mut pool = Vec::new();
    let mut feeds = Vec::new();
    for (i, dims) in p.inputs.iter().enumerate() {
        let name = format!("x{i}");
        let t = g.input(&name, DType::F32, dims.clone()).expect("input");
        feeds.push((
            name,
            Value::F32(rand_f32(p.seed.wrapping_add(i as u64), dims, -2.0, 2.0)),
        ));
        pool.push(bounded(t, 2.0));
    }
    let mut largest_bound = 2.0f32;
    let mut ops_built = 0;
    for (n, spec) in p.ops.iter().enumerate() {
        let seed = p.seed.wrapping_add(100 + n as u64);
        let Some(mut made) = build(&g, spec, &pool, seed) else {
            continue;
        };
        if spec.twice
            && let Some(again) = build(&g, spec, &pool, seed)
        {
            made.extend(again);
        }
        ops_built += 1;
        for b in made {
            largest_bound = largest_bound.max(b.bound);
            let b = if b.bound > SQUASH {
                bounded(b.t.tanh().expect("tanh of f32"), 1.0)
            } else {
                b
            };
            pool.push(b);
        }
    }
    let mut outputs = vec![pool[pool.len() - 1].t.clone()];
    outputs.extend(
        p.requested
            .iter()
            .map(|&i| pool[i as usize % pool.len()].t.clone()),
    );
    Built {
        g,
        outputs,
        feeds,
        largest_bound,
        ops_built,
    }
}

/// Compiles with `passes` for `device`, writing in place where the
/// planner can when `in_place`; `None` when the device does not support a
/// kernel.
fn compile(b: &Built, device: Device, passes: PassOptions, in_place: bool) -> Option<Plan> {
    let mut options = tensorgraph::options(device).expect("options for an available device");
    options.passes = passes;
    options.in_place = in_place;
    let refs: Vec<&Tensor> = b.outputs.iter().collect();
    match b.g.compile(&refs, &options) {
        Ok(plan) => Some(plan),
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("skipped on {device}: {e}");
            None
        }
        Err(e) => panic!("compile on {device} with {passes:?}: {e}"),
    }
}

fn run(b: &Built, plan: &Plan, what: &str) -> Vec<Value> {
    let feeds: Vec<(&str, Value)> = b
        .feeds
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    plan.run(&feeds)
        .unwrap_or_else(|e| panic!("{what}: run failed: {e}"))
}

fn assert_agree(b: &Built, got: &[Value], expected: &[Value], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: number of outputs");
    // Rounding errors scale with the largest magnitude the graph reaches.
    let atol = 1e-5 * b.largest_bound.max(1.0);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let (g, e) = (f32_of(g.clone()), f32_of(e.clone()));
        assert_close(&g, &e, 1e-4, atol, &format!("{what}: output {i}"));
    }
}

/// Every device with passes on and with passes off (lone steps then
/// written in place), vs the CPU node by node with nothing in place.
fn check(p: &Program) {
    let b = build_program(p);
    let reference =
        compile(&b, Device::Cpu, PassOptions::none(), false).expect("the CPU runs every op");
    let expected = run(&b, &reference, "cpu, passes off, nothing in place");
    for device in devices() {
        for (with, passes) in [
            ("with", PassOptions::default()),
            ("without", PassOptions::none()),
        ] {
            let Some(plan) = compile(&b, device, passes, true) else {
                continue;
            };
            let got = run(&b, &plan, &format!("{device}, passes {with}"));
            assert_agree(
                &b,
                &got,
                &expected,
                &format!("{device} {with} passes vs cpu without"),
            );
        }
    }
}

proptest! {
    // 128 cases by default (well under a second); `PROPTEST_CASES=5000`
    // for a longer search.
    #![proptest_config(Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn passes_and_devices_agree_on_random_graphs(p in program()) {
        check(&p);
    }
}

/// The generator is not vacuous: over a fixed set of programs, each pass
/// alone removes steps from some of them.
#[test]
fn random_graphs_exercise_every_pass() {
    let mut runner = TestRunner::deterministic();
    let strategy = program();
    let only = |f: fn(&mut PassOptions)| {
        let mut p = PassOptions::none();
        f(&mut p);
        p
    };
    let passes = [
        ("constant_folding", only(|p| p.constant_folding = true)),
        ("cse", only(|p| p.cse = true)),
        ("simplify", only(|p| p.simplify = true)),
    ];
    let simplify_dce = only(|p| (p.simplify, p.dce) = (true, true));
    let (mut helped, mut dce_helped) = ([0usize; 3], 0);
    let (mut built, mut steps_off, mut steps_on) = (0, 0, 0);
    for _ in 0..64 {
        let p = strategy.new_tree(&mut runner).expect("a program").current();
        let b = build_program(&p);
        built += b.ops_built;
        let steps = |passes| {
            compile(&b, Device::Cpu, passes, true)
                .expect("cpu")
                .steps()
                .len()
        };
        let none = steps(PassOptions::none());
        for (k, (_, passes)) in passes.iter().enumerate() {
            if steps(*passes) < none {
                helped[k] += 1;
            }
        }
        // Dead code appears once another pass has cut something off.
        if steps(simplify_dce) < steps(passes[2].1) {
            dce_helped += 1;
        }
        steps_off += none;
        steps_on += steps(PassOptions::default());
    }
    eprintln!(
        "64 programs: {built} ops built, {steps_off} steps without passes, {steps_on} with; \
         programs each pass helped: {helped:?}, dce after simplify: {dce_helped}"
    );
    assert!(
        built >= 64 * 3,
        "only {built} ops type-checked over 64 programs"
    );
    for ((name, _), n) in passes.iter().zip(helped) {
        assert!(
            n >= 2,
            "{name} removed steps from only {n} of 64 random programs"
        );
    }
    assert!(
        dce_helped >= 2,
        "dce removed steps after simplification in only {dce_helped} programs"
    );
}

/// One program written out by hand that uses every generator op, so a
/// change to the generator that breaks an op shows here first.
#[test]
fn every_generator_op_builds() {
    let p = Program {
        inputs: vec![vec![2, 3], vec![3]],
        ops: (0..13)
            .map(|kind| OpSpec {
                kind,
                a: kind,
                b: 1,
                c: 2,
                twice: kind % 3 == 0,
            })
            .collect(),
        requested: vec![3, 7],
        seed: 7,
    };
    let b = build_program(&p);
    assert_eq!(b.ops_built, 13, "every op kind builds on these shapes");
    check(&p);
}

/// Cases the generator once found, kept as plain tests.
mod found {
    use super::*;

    /// A zero-size operand broadcast into a fused elementwise kernel:
    /// `[2, 0] / (|[0]| + 1)`.
    #[test]
    fn zero_size_operand_of_a_fused_kernel() {
        let p = Program {
            inputs: vec![vec![2, 0], vec![0]],
            ops: vec![OpSpec {
                kind: 1,
                a: 1,
                b: 0,
                c: 5,
                twice: false,
            }],
            requested: vec![],
            seed: 0,
        };
        let b = build_program(&p);
        assert_eq!(b.ops_built, 1);
        assert_eq!(b.outputs[0].shape().dims(), [2, 0]);
        check(&p);
    }
}
