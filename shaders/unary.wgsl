// unary.wgsl: one-operand elementwise ops, y[i] = {{EXPR}} of x[i].
//
// Bindings (group 0):
//   0  x: array<{{T}}>           read-only storage, the operand
//   1  y: array<{{T}}>           read_write storage, the result
//   2  p: Params                 uniform
// struct Params { n: u32 (elements), _pad0, _pad1, _pad2 }
//
// Template: {{T}} element type (f32 | i32); {{EXPR}} an expression of `v`.
// Dispatch: ceil(n / 256) workgroups, folded into y past the per-dimension cap.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> y: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;

// tanh without overflow for large |v| (exp of a non-positive argument)
// and without cancellation near 0 (a Taylor polynomial below 0.125, where
// its first omitted term is under 1e-11 relative).
fn tanh_safe(v: f32) -> f32 {
    let a = abs(v);
    if a < 0.125 {
        let x2 = v * v;
        return v * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    }
    let e = exp(-2.0 * a);
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, v < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// Negatives become 0; NaN and -0.0 pass through, as on the CPU.
fn relu_f32(v: f32) -> f32 {
    return select(v, 0.0, v < 0.0);
}

fn op(v: {{T}}) -> {{T}} {
    return {{EXPR}};
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i < p.n {
        y[i] = op(x[i]);
    }
}
