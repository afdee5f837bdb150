// unary.wgsl: one-operand elementwise ops and dtype conversions,
// y[i] = {{EXPR}} of x[i].
//
// Bindings (group 0):
//   0  x: array<{{SRC}}>         read-only storage, the operand
//   1  y: array<{{DST}}>         read_write storage, the result
//   2  p: Params                 uniform
// struct Params { n: u32 (elements), _pad0, _pad1, _pad2 }
//
// Template: {{SRC}}, {{DST}} element types (f32 | i32; equal for unary
// ops, different for casts); {{EXPR}} an expression of `v` over the
// helpers of math.wgsl (spliced in at the HELPERS placeholder).
// Dispatch: ceil(n / 256) workgroups, folded into y past the per-dimension cap.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<{{SRC}}>;
@group(0) @binding(1) var<storage, read_write> y: array<{{DST}}>;
@group(0) @binding(2) var<uniform> p: Params;

{{HELPERS}}

fn op(v: {{SRC}}) -> {{DST}} {
    return {{EXPR}};
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i < p.n {
        y[i] = op(x[i]);
    }
}
