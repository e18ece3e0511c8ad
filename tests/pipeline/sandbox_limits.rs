//! A plugin that loops forever, allocates without bound, reads outside its
//! grant or panics is stopped or refused with an error that says which
//! limit or grant; its item fails, the run goes on with a fresh instance.
//! The misbehaving extractor is `plugins/fixtures/hostile`: what it does is
//! chosen by the image name.

use ferry::runner::Outcome;
use ferry_tests::{demo_guid, ImageKind, ImageSpec, PatientSpec, SiteBuilder};

use crate::harness::{report, run, runtime, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_are_stopped_and_the_run_goes_on() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 11, "fine before", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 12, "loop", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 13, "alloc", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 14, "escape", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 15, "panic", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 16, "fine after", ImageKind::IntraOral))
            .map_card("C-1", &demo_guid(1)),
    );
    let toml = fx.pipeline_toml("fixture-hostile", "{ memory = \"32MiB\", timeout = \"1500ms\" }", "");
    let rt = runtime(fx.load(&toml)).await;
    let started = std::time::Instant::now();
    let s = run(&rt).await;
    println!("run with a looping guest took {:?}", started.elapsed());

    let path = |id: u32| fx.site.image(id).rel_path.clone();
    for id in [11, 16] {
        assert_eq!(report(&s, &path(id)).outcome, Outcome::Stored, "{}", s.line());
    }
    let looped = report(&s, &path(12));
    assert_eq!(looped.outcome, Outcome::Failed);
    assert!(looped.detail.contains("exceeded its 1.5s call deadline (limits.timeout)"), "{}", looped.detail);
    assert!(looped.detail.contains("stage `extractor` (fixture-hostile.wasm)"), "{}", looped.detail);

    let alloc = report(&s, &path(13));
    assert_eq!(alloc.outcome, Outcome::Failed);
    assert!(alloc.detail.contains("more than its 32 MiB memory limit (limits.memory)"), "{}", alloc.detail);

    let escape = report(&s, &path(14));
    assert_eq!(escape.outcome, Outcome::Failed);
    assert!(escape.detail.contains("leaves fs root"), "{}", escape.detail);
    assert!(escape.detail.contains("add `grants.fs.not-granted"), "{}", escape.detail);
    // list-dirs: each place refused on its own, the item's folder too (an
    // extractor may read its item's file, not list around it)
    for refused in
        ["list-dirs pdata:../../etc/passwd refused: denied: path", "list-dirs not-granted:x refused: denied: stage"]
    {
        assert!(escape.detail.contains(refused), "{refused}: {}", escape.detail);
    }
    assert!(escape.detail.contains("list-dirs pdata:P_"), "{}", escape.detail);
    assert!(escape.detail.contains("may not read fs root `pdata`"), "{}", escape.detail);
    assert!(
        escape.detail.contains("list-dirs of 1001: invalid: list-dirs of 1001 directories: at most 1000 per call"),
        "{}",
        escape.detail
    );

    let panicked = report(&s, &path(15));
    assert_eq!(panicked.outcome, Outcome::Failed);
    assert!(panicked.detail.contains("crashed during extract"), "{}", panicked.detail);

    // three traps (loop, alloc, panic) on three different instances: a
    // trapped instance is never used again
    let created = rt.stages.extractor.as_ref().unwrap().instances_created();
    assert!(created >= 3, "one instance per trap at least (created {created})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_left_large_by_one_item_is_not_kept_idle() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 21, "big one", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 22, "plain a", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 23, "big two", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 24, "plain b", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 25, "plain c", ImageKind::IntraOral))
            .map_card("C-1", &demo_guid(1)),
    );
    // one instance at a time, so the count is exact
    let toml = fx
        .pipeline_toml("fixture-hostile", "{ memory = \"32MiB\", timeout = \"10s\" }", "")
        .replace("plugin = \"fixture-hostile\"\nconcurrency = 2", "plugin = \"fixture-hostile\"\nconcurrency = 1");
    assert!(toml.contains("concurrency = 1"), "{toml}");
    let rt = runtime(fx.load(&toml)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 5, "{}", s.line());
    // the start-up instance serves `big one` and is dropped (20 MiB of a
    // 32 MiB limit stay grown); `plain a` gets a new one, kept; `big two`
    // uses it and drops it; `plain b` gets a third, which `plain c` reuses
    let created = rt.stages.extractor.as_ref().unwrap().instances_created();
    assert_eq!(created, 3, "instances created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_concurrency_costs_only_what_is_in_flight() {
    let fx = Fixture::new(
        SiteBuilder::new()
            .patient(PatientSpec::new(1, "C-1", "Muster", "Anna"))
            .image(ImageSpec::new(1, 31, "one", ImageKind::IntraOral))
            .image(ImageSpec::new(1, 32, "two", ImageKind::IntraOral))
            .map_card("C-1", &demo_guid(1)),
    );
    let toml = fx
        .stock_toml()
        .replace("plugin = \"dicom-meta\"\nconcurrency = 2", "plugin = \"dicom-meta\"\nconcurrency = 64");
    assert!(toml.contains("concurrency = 64"), "{toml}");
    let rt = runtime(fx.load(&toml)).await;
    let s = run(&rt).await;
    assert_eq!(s.count(Outcome::Stored), 2, "{}", s.line());
    // the start-up instance plus at most one per item in flight, not 64
    let created = rt.stages.extractor.as_ref().unwrap().instances_created();
    assert!(created <= 3, "instances created: {created}");
}
