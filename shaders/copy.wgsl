// copy.wgsl — the reference decode speed is measured against: a plain copy
// of the same number of bytes on the same device, 16 bytes per thread per
// step, in a grid-stride loop.

struct CopyParams {
    // Number of vec4<u32> to copy.
    count: u32,
    // Threads in the whole dispatch.
    stride: u32,
    reserved0: u32,
    reserved1: u32,
}

@group(0) @binding(0) var<uniform> params: CopyParams;
@group(0) @binding(1) var<storage, read> source: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> destination: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var i = id.x; i < params.count; i += params.stride) {
        destination[i] = source[i];
    }
}
