//! 4-bit PQ neighbour-code rows (`quantized_graph` on for PQ): the traversal scores an expanded
//! node's neighbours from its own packed row. The results must be identical to the gather path
//! (the estimates are bit-identical), and the rows must follow adds, deletes, upserts,
//! consolidations and save/load.

mod common;
use common::{clustered, recall};

use nearq_core::{
    exact_search, Allowed, BuildParams, EncodingSpec, Filter, FilterStrategy, Index, IndexParams,
    Metric, SearchParams,
};

fn pq4(m: usize) -> EncodingSpec {
    EncodingSpec::Pq {
        m: Some(m),
        bits: 4,
        opq: false,
    }
}

fn build(data: &[f32], dim: usize, metric: Metric, enc: EncodingSpec, degree: usize) -> Index {
    let p = IndexParams {
        metric,
        encoding: enc,
        keep_vectors: false,
        build: BuildParams {
            degree,
            ..BuildParams::default()
        },
    };
    Index::build(data, dim, &p, Some(2), &|_, _| {}).unwrap()
}

fn sp(k: usize, ef: usize) -> SearchParams {
    SearchParams {
        k,
        ef: Some(ef),
        rerank: None,
    }
}

/// A copy of `index` with the rows turned `on` (through a byte round trip).
fn copy_with(index: &Index, on: bool) -> Index {
    let mut c = Index::from_bytes(index.to_bytes()).unwrap();
    c.set_quantized_graph(on, Some(2));
    c
}

/// The rows of `index` equal a fresh pack of its codes and graph (a reloaded copy packs every
/// row from scratch), and searches (unfiltered, filtered, through tombstones) return exactly
/// what the gather path returns.
fn check_in_step(index: &Index, queries: &[f32], what: &str) {
    let rows = index.neighbor_rows().expect("rows on");
    assert_eq!(rows.len(), index.graph().len(), "{what}");
    let fresh = Index::from_bytes(index.to_bytes()).unwrap();
    let fr = fresh.neighbor_rows().expect("rows survive a round trip");
    assert!(
        rows.bytes() == fr.bytes(),
        "{what}: rows differ from a fresh pack"
    );
    let off = copy_with(index, false);
    assert!(off.neighbor_rows().is_none() && !off.has_quantized_graph());
    for ef in [16, 64] {
        let p = sp(10, ef);
        assert_eq!(
            index.search(queries, &p, Some(1)).unwrap(),
            off.search(queries, &p, Some(1)).unwrap(),
            "{what}: ef {ef}"
        );
    }
    let allowed: Vec<i64> = index.ids().into_iter().step_by(3).collect();
    let f = Filter {
        allowed: Allowed::Ids(&allowed),
        strategy: FilterStrategy::Graph,
    };
    let p = sp(10, 48);
    let a = index.search_with(queries, &p, Some(&f), Some(1)).unwrap();
    assert_eq!(
        a,
        off.search_with(queries, &p, Some(&f), Some(1)).unwrap(),
        "{what}: filtered"
    );
    assert!(a.0.iter().all(|i| *i < 0 || allowed.contains(i)), "{what}");
}

#[test]
fn rows_are_off_by_default_and_give_the_gather_paths_results() {
    let (n, dim) = (3000, 32);
    let data = clustered(n, dim, 1);
    let queries = clustered(60, dim, 2);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        // degree 40: two blocks of 32 per row, the second one partly empty
        for (m, degree) in [(16, 32), (7, 40)] {
            let index = build(&data, dim, metric, pq4(m), degree);
            assert!(!index.quantized_graph_enabled() && !index.has_quantized_graph());
            assert_eq!(index.memory_usage().neighbor_codes, 0);
            let on = copy_with(&index, true);
            assert!(on.has_quantized_graph() && on.quantized_graph_enabled());
            let mem = on.memory_usage();
            let rb = degree.div_ceil(32) * 32 * m.div_ceil(2);
            assert_eq!(on.neighbor_rows().unwrap().row_bytes(), rb);
            assert!(mem.neighbor_codes >= n * rb, "{mem:?}");
            assert_eq!(
                mem.total(),
                mem.codes
                    + mem.graph
                    + mem.vectors
                    + mem.params
                    + mem.ids
                    + mem.quantized_graph
                    + mem.neighbor_codes
            );
            check_in_step(&on, &queries, &format!("{metric:?} m={m} degree={degree}"));
        }
    }
}

#[test]
fn rows_with_more_than_256_subquantizers_match() {
    // 520 sub-quantizers: the FastScan accumulation runs in two u16 chunks.
    let (n, dim) = (500, 600);
    let data = clustered(n, dim, 3);
    let queries = clustered(10, dim, 4);
    let index = build(&data, dim, Metric::L2, pq4(520), 32);
    check_in_step(&copy_with(&index, true), &queries, "m=520");
}

#[test]
fn rows_follow_adds_deletes_upserts_and_consolidation() {
    let (n, dim) = (4000, 24);
    let data = clustered(n, dim, 5);
    let queries = clustered(50, dim, 6);
    let mut index = build(&data[..2000 * dim], dim, Metric::L2, pq4(12), 32);
    index.set_quantized_graph(true, Some(2));
    check_in_step(&index, &queries, "built");
    // adds (new rows, and rows of existing nodes that gained reverse edges)
    index
        .add(&data[2000 * dim..3000 * dim], dim, None, Some(2))
        .unwrap();
    check_in_step(&index, &queries, "after add");
    // a few deletes: tombstones, no consolidation yet
    let del: Vec<i64> = (0..100).map(|i| i * 7).collect();
    assert_eq!(index.delete(&del, Some(2)), 100);
    assert!(index.deleted_count() > 0);
    check_in_step(&index, &queries, "tombstones");
    let (ids, _) = index.search(&queries, &sp(10, 64), Some(1)).unwrap();
    assert!(ids.iter().all(|i| !del.contains(i)));
    // upserts of existing ids with other vectors
    let up: Vec<i64> = (1..300).step_by(3).collect();
    let vecs: Vec<f32> = up
        .iter()
        .flat_map(|&i| data[(3000 + i as usize) * dim..(3001 + i as usize) * dim].to_vec())
        .collect();
    index.upsert(&vecs, dim, &up, Some(2)).unwrap();
    check_in_step(&index, &queries, "after upsert");
    // enough deletes to consolidate (positions renumbered, codes moved)
    let del: Vec<i64> = (1000..1600).collect();
    index.delete(&del, Some(2));
    assert_eq!(index.deleted_count(), 0, "consolidated");
    check_in_step(&index, &queries, "after consolidation");
    index.add(&data[3000 * dim..], dim, None, Some(2)).unwrap();
    check_in_step(&index, &queries, "after add after consolidation");
    // turned off and on again
    index.set_quantized_graph(false, Some(2));
    assert!(index.neighbor_rows().is_none());
    assert_eq!(index.memory_usage().neighbor_codes, 0);
    index.set_quantized_graph(true, Some(2));
    check_in_step(&index, &queries, "on again");
}

#[test]
fn the_choice_survives_save_load_and_mmap() {
    let (n, dim) = (1500, 16);
    let data = clustered(n, dim, 7);
    let queries = clustered(20, dim, 8);
    let dir = std::env::temp_dir().join(format!("nearq-pq-rows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut index = build(&data, dim, Metric::Cosine, pq4(8), 32);
    let (base, _) = index.search(&queries, &sp(10, 64), None).unwrap();
    let path = dir.join("off.nearq");
    index.save(&path).unwrap();
    assert!(!Index::load(&path).unwrap().has_quantized_graph());
    index.set_quantized_graph(true, None);
    let path = dir.join("on.nearq");
    index.save(&path).unwrap();
    for back in [
        Index::load(&path).unwrap(),
        Index::load_mmap(&path).unwrap(),
        Index::load_mapped(&path, false).unwrap(),
    ] {
        assert!(back.has_quantized_graph());
        assert_eq!(back.to_payload(), index.to_payload());
        assert!(back.neighbor_rows().unwrap().bytes() == index.neighbor_rows().unwrap().bytes());
        assert_eq!(back.search(&queries, &sp(10, 64), None).unwrap().0, base);
    }
    // 8-bit PQ has no packed layout: the switch is kept, no rows are built
    let mut p8 = build(
        &data,
        dim,
        Metric::L2,
        EncodingSpec::Pq {
            m: Some(8),
            bits: 8,
            opq: false,
        },
        32,
    );
    p8.set_quantized_graph(true, None);
    assert!(p8.quantized_graph_enabled() && !p8.has_quantized_graph());
    let back = Index::from_bytes(p8.to_bytes()).unwrap();
    assert!(back.quantized_graph_enabled() && !back.has_quantized_graph());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recall_with_rows_and_float_reranking() {
    let (n, dim, k) = (5000, 32, 10);
    let data = clustered(n, dim, 9);
    let queries = clustered(100, dim, 10);
    let (truth, _) = exact_search(&data, &queries, dim, k, Metric::L2);
    let p = IndexParams {
        metric: Metric::L2,
        encoding: pq4(16),
        keep_vectors: true,
        // α = 1.2: this low-dimensional clustered data needs the longer edges (see
        // lifecycle.rs); the test is about the rows, not the default.
        build: BuildParams {
            alpha: 1.2,
            ..BuildParams::default()
        },
    };
    let mut index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
    index.set_quantized_graph(true, None);
    assert!(index.has_quantized_graph());
    let p = SearchParams {
        k,
        ef: Some(96),
        rerank: Some(96),
    };
    let (ids, _) = index.search(&queries, &p, None).unwrap();
    let r = recall(&ids, &truth, k);
    // 4-bit codes of 2 dimensions each steer the traversal: 0.88 at the time of writing.
    assert!(r >= 0.85, "recall {r}");
}
