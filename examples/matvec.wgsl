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

// Half precision to single, exactly, with bit arithmetic only (no
// optional shader capability needed).
fn half_to_f32(half: u32) -> f32 {
    let sign = (half & 0x8000u) << 16u;
    let exponent = (half >> 10u) & 0x1Fu;
    let mantissa = half & 0x3FFu;
    if (exponent == 0u) {
        // Subnormal: mantissa * 2^-24, exact in f32.
        let magnitude = f32(mantissa) * 5.9604644775390625e-8;
        return select(magnitude, -magnitude, sign != 0u);
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7F800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

fn weight(index: u32) -> f32 {
    let element = params.first_element + index;
    if (params.dtype == 0u) {
        return bitcast<f32>(weights[element]);
    }
    let half_word = weights[element / 2u] >> ((element % 2u) * 16u);
    if (params.dtype == 1u) {
        return bitcast<f32>((half_word & 0xFFFFu) << 16u);
    }
    return half_to_f32(half_word & 0xFFFFu);
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
