//! Dispatch: which table `kernels()` picks, and how `NEARQ_SIMD` caps it.
//!
//! `NEARQ_EXPECT_LEVEL`, when set, names the level this run must pick (CI sets it for every
//! native and emulated run, so a detection failure cannot fall back silently).

use nearq_kernels::{kernels, kernels_for, resolve_level, supported_levels, SimdLevel, ENV_VAR};

#[test]
fn kernels_picks_the_resolved_level() {
    let best = *supported_levels().last().unwrap();
    let requested = std::env::var(ENV_VAR).ok();
    let k = kernels();
    assert_eq!(k.level, resolve_level(requested.as_deref()));
    if requested.is_none() {
        assert_eq!(k.level, best);
    }
    assert!(std::ptr::eq(k, kernels()), "resolved once");
    assert!(std::ptr::eq(k, kernels_for(k.level).unwrap()));
}

#[test]
fn expected_level() {
    if let Ok(want) = std::env::var("NEARQ_EXPECT_LEVEL") {
        assert_eq!(
            kernels().level.name(),
            want.trim(),
            "dispatch picked {:?}",
            kernels()
        );
    }
}

#[test]
fn caps_never_exceed_support() {
    let supported = supported_levels();
    let best = *supported.last().unwrap();
    assert_eq!(resolve_level(None), best);
    assert_eq!(resolve_level(Some("no-such-level")), best);
    assert_eq!(resolve_level(Some("scalar")), SimdLevel::Scalar);
    for l in SimdLevel::ALL {
        let got = resolve_level(Some(l.name()));
        assert!(supported.contains(&got), "{l} -> {got} not supported");
        if supported.contains(&l) {
            assert_eq!(got, l);
        }
    }
}

#[test]
fn unsupported_levels_have_no_table() {
    let supported = supported_levels();
    for l in SimdLevel::ALL {
        assert_eq!(kernels_for(l).is_some(), supported.contains(&l), "{l}");
    }
}
