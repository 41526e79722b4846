// matvec.wgsl — y = W x for one weight matrix of a decoded group, used by
// examples/run_blocks.rs. Each invocation sums one row in a fixed order, so
// the same weights always give the same bits.

struct MatVecParams {
    // Index of the matrix's first element in `weights`, in elements.
    first_element: u32,
    rows: u32,
    cols: u32,
    // 0: F32, 1: BF16, 2: F16.
    dtype: u32,
}

@group(0) @binding(0) var<uniform> params: MatVecParams;
@group(0) @binding(1) var<storage, read> weights: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn weight(index: u32) -> f32 {
    let element = params.first_element + index;
    if (params.dtype == 0u) {
        return bitcast<f32>(weights[element]);
    }
    let half_word = weights[element / 2u] >> ((element % 2u) * 16u);
    if (params.dtype == 1u) {
        return bitcast<f32>((half_word & 0xFFFFu) << 16u);
    }
    return unpack2x16float(half_word & 0xFFFFu).x;
}

@compute @workgroup_size(64)
fn matvec(@builtin(global_invocation_id) id: vec3<u32>) {
    let row = id.x;
    if (row >= params.rows) {
        return;
    }
    var sum = 0.0;
    for (var col = 0u; col < params.cols; col++) {
        sum = fma(weight(row * params.cols + col), x[col], sum);
    }
    y[row] = sum;
}
