// Temporary probe (not for commit): where does the full-sweep optimum fall relative to t_end?
use nearq_core::encoding::rabitq::ex_levels_sweep;
fn main() {
    let mut s = 12345u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    for d in [64usize, 128, 384, 768] {
        for ex in 1..=7u32 {
            let l = ((1u32 << ex) - 1) as f64;
            let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
            let mut m = vec![0u8; d];
            let t0 = std::time::Instant::now();
            for _ in 0..200 {
                let g: Vec<f64> = (0..d)
                    .map(|_| {
                        let (u, v) = (next().max(1e-12), next());
                        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                    })
                    .collect();
                let n = g.iter().map(|x| x * x).sum::<f64>().sqrt();
                let a: Vec<f32> = g.iter().map(|x| (x.abs() / n) as f32).collect();
                let amax = a.iter().cloned().fold(0.0f32, f32::max) as f64;
                let amin = a.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
                let (_, t) = ex_levels_sweep(&a, ex, 0.0, (l + 1.0) / amin, &mut m);
                let f = t * amax / (l + 10.0);
                lo = lo.min(f);
                hi = hi.max(f);
            }
            println!(
                "d={d} ex={ex}: t*amax/(L+10) in [{lo:.3}, {hi:.3}]  full sweep {:.1} us/vec",
                t0.elapsed().as_secs_f64() * 1e6 / 200.0
            );
        }
    }
}
