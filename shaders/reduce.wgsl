// reduce.wgsl: reductions as a workgroup tree in shared memory. A
// workgroup of {{WG}} threads covers `cols` neighbouring outputs with
// {{WG}} / cols lanes each: the lanes of an output stride over its reduced
// elements, each folding a private partial, then the partials are halved in
// workgroup memory until one per output is left.
//
// cols = 1 (row form) gives one output all {{WG}} threads: for reductions
// over the innermost axes, where neighbouring threads read neighbouring
// elements. cols = 16 (column form) is used when the innermost axis is
// kept: 16 neighbouring outputs are then contiguous, so each group of 16
// threads reads 16 neighbouring elements per step.
//
// Each operand is addressed through two strided index spaces: the kept
// axes (which output) and the reduced axes (which element of the
// reduction), so any axis set reduces without a copy, and an operand
// broadcast to the reduced shape is read in place (stride 0).
//
// The value folded at each element is a generated program (fused.rs) of
// the operands there: for Op::Reduce the identity of one operand, for
// Op::ReducePrologue the prologue, so the reduced tensor is never stored.
//
// Bindings (group 0), in this order:
//   x<j>: array<T_j>      read-only storage, each operand the program reads
//   y: array<T>           read_write storage, one value per output
//   p: Params             uniform, after the storage bindings
// struct Params {
//   n_out: u32, n_red: u32, kept_rank: u32, red_rank: u32,
//   identity: u32,   // bits of the fold's identity (T), e.g. -inf for max
//   cols: u32,       // outputs per workgroup: a power of two dividing WG
//   zero: u32,       // always 0: program literals are xor-ed with it
//   _pad1: u32,
//   kept_shape: array<vec4<u32>, 2>,   red_shape: array<vec4<u32>, 2>,
//   // per operand j read at strides (not a single element):
//   k<j>: array<vec4<u32>, 2>,   r<j>: array<vec4<u32>, 2>,  // kept, reduced strides
// }
//
// Template: T element type; WG threads per workgroup (power of two);
// COMBINE a function name folding two Ts (helpers below and math.wgsl's
// max_f32/min_f32, spliced in at the HELPERS placeholder); FINISH an
// expression of the total `acc` and the count `p.n_red`; FIELDS,
// BINDINGS, PARAMS_BINDING, OPS, EVAL, KEPT_INIT, KEPT_WALK, RED_INIT,
// RED_WALK and VALUE the generated program and its operands' addressing.
// Dispatch: ceil(n_out / cols) workgroups, folded into y past the cap.

struct Params {
    n_out: u32,
    n_red: u32,
    kept_rank: u32,
    red_rank: u32,
    identity: u32,
    cols: u32,
    zero: u32,
    _pad1: u32,
    kept_shape: array<vec4<u32>, 2>,
    red_shape: array<vec4<u32>, 2>,
{{FIELDS}}
}

const WG: u32 = {{WG}}u;

{{BINDINGS}}
@group(0) @binding({{PARAMS_BINDING}}) var<uniform> p: Params;

var<workgroup> partial: array<{{T}}, WG>;

{{HELPERS}}

fn add_f32(a: f32, b: f32) -> f32 {
    return a + b;
}

fn add_i32(a: i32, b: i32) -> i32 {
    return a + b;
}

fn max_i32(a: i32, b: i32) -> i32 {
    return max(a, b);
}

fn min_i32(a: i32, b: i32) -> i32 {
    return min(a, b);
}

// Truncating integer mean; an empty mean is 0.
fn mean_i32(acc: i32, count: u32) -> i32 {
    if count == 0u {
        return 0;
    }
    return acc / i32(count);
}

{{OPS}}

{{EVAL}}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cols = p.cols;
    let lanes = WG / cols;
    let col = lid.x % cols;
    let lane = lid.x / cols;
    let o = (wid.x + wid.y * nwg.x) * cols + col;
    // Threads past the last output still reach every barrier.
    let live = o < p.n_out;
    var acc = bitcast<{{T}}>(p.identity);
    if live {
        var rest = o;
{{KEPT_INIT}}
        for (var d = i32(p.kept_rank) - 1; d >= 0; d = d - 1) {
            let k = u32(d);
            let dim = p.kept_shape[k / 4u][k % 4u];
            let c = rest % dim;
            rest = rest / dim;
{{KEPT_WALK}}
        }
        for (var r = lane; r < p.n_red; r = r + lanes) {
            var rr = r;
{{RED_INIT}}
            for (var d = i32(p.red_rank) - 1; d >= 0; d = d - 1) {
                let k = u32(d);
                let dim = p.red_shape[k / 4u][k % 4u];
                let c = rr % dim;
                rr = rr / dim;
{{RED_WALK}}
            }
            acc = {{COMBINE}}(acc, {{VALUE}});
        }
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = lanes / 2u; s > 0u; s = s / 2u) {
        if lane < s {
            partial[lid.x] = {{COMBINE}}(partial[lid.x], partial[lid.x + s * cols]);
        }
        workgroupBarrier();
    }
    if live && lane == 0u {
        let acc = partial[col];
        y[o] = {{FINISH}};
    }
}
