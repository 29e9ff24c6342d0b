//! Micro benchmark: ns per call of every kernel in every table this CPU runs.
//!
//! `cargo bench -p nearq-kernels` (optional argument: dimension, default 384). Uses only
//! `std::time`; each figure is the best of several timed batches.

use std::hint::black_box;
use std::time::Instant;

use nearq_kernels::{all_variants, Kernels};

fn time_ns(mut f: impl FnMut()) -> f64 {
    let iters = 20_000;
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    best
}

fn main() {
    let dim: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(384);
    let fa: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
    let fb: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.11).cos()).collect();
    let ba: Vec<u8> = (0..dim).map(|i| (i * 37 % 251) as u8).collect();
    let bb: Vec<u8> = (0..dim).map(|i| (i * 91 % 253) as u8).collect();
    let bi: Vec<i8> = bb.iter().map(|&x| x as i8).collect();
    let words = dim.div_ceil(64);
    let wa: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let wb: Vec<u64> = (0..words as u64)
        .map(|i| !i.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        .collect();
    // FastScan with dim / 4 sub-quantizers (4-bit PQ codes over 4 dimensions each).
    let m = (dim / 4).max(1);
    let codes: Vec<u8> = (0..16 * m).map(|i| (i * 29 % 256) as u8).collect();
    let luts: Vec<u8> = (0..16 * m).map(|i| (i * 13 % 200) as u8).collect();

    println!("dim = {dim}, fastscan m = {m}; ns per call (best of 7 batches)");
    println!(
        "{:<30} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "table",
        "l2sq_f32",
        "dot_f32",
        "dot_f32_u8",
        "dot_u8_i8",
        "dot_u8",
        "dot_u4_i8",
        "and_popcnt",
        "fastscan_u16"
    );
    for k in all_variants() {
        let k: &Kernels = k;
        let mut out = [0u16; 32];
        let t = [
            time_ns(|| {
                black_box((k.l2sq_f32)(black_box(&fa), black_box(&fb)));
            }),
            time_ns(|| {
                black_box((k.dot_f32)(black_box(&fa), black_box(&fb)));
            }),
            time_ns(|| {
                black_box((k.dot_f32_u8)(black_box(&fa), black_box(&ba)));
            }),
            time_ns(|| {
                black_box((k.dot_u8_i8)(black_box(&ba), black_box(&bi)));
            }),
            time_ns(|| {
                black_box((k.dot_u8)(black_box(&ba), black_box(&bb)));
            }),
            time_ns(|| {
                black_box((k.dot_u4_i8)(
                    black_box(&ba[..dim.div_ceil(2)]),
                    black_box(&bi),
                ));
            }),
            time_ns(|| {
                black_box((k.and_popcount_u64)(black_box(&wa), black_box(&wb)));
            }),
            time_ns(|| {
                (k.fastscan_u16)(black_box(&codes), black_box(&luts), &mut out);
                black_box(&out);
            }),
        ];
        println!(
            "{:<30} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>12.1}",
            k.isa, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
        );
    }
}
