//! Catalog: only regular files under the root are served; digests are BLAKE3 of each segment; a changed
//! file is noticed.

use std::os::unix::fs::symlink;
use std::path::Path;

use ccfd_server::catalog::{Catalog, CatalogError};
use ccfd_server::config::CodingSettings;

fn coding(segment_size: u64) -> CodingSettings {
    CodingSettings {
        segment_size,
        symbol_size: 64,
        ..CodingSettings::default()
    }
}

fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn setup() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.bin"), patterned(10_000, 1)).unwrap();
    std::fs::write(root.join("sub/b.bin"), b"hello").unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    symlink(dir.path().join("secret"), root.join("secret-link")).unwrap();
    symlink("../../secret", root.join("sub/relative-out")).unwrap();
    symlink("sub/b.bin", root.join("inside-link")).unwrap();
    symlink("/", root.join("slash")).unwrap();
    let catalog = Catalog::open(&root, coding(4096)).unwrap();
    (dir, catalog)
}

#[test]
fn parent_and_absolute_names_are_refused() {
    let (_dir, catalog) = setup();
    assert!(matches!(
        catalog.lookup("../etc/passwd"),
        Err(CatalogError::ParentComponent { .. })
    ));
    assert!(matches!(
        catalog.lookup("sub/../../secret"),
        Err(CatalogError::ParentComponent { .. })
    ));
    assert!(matches!(
        catalog.lookup("/etc/passwd"),
        Err(CatalogError::AbsoluteName { .. })
    ));
    assert!(matches!(
        catalog.lookup(""),
        Err(CatalogError::InvalidName { .. })
    ));
    assert!(matches!(
        catalog.lookup("a\0b"),
        Err(CatalogError::InvalidName { .. })
    ));
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    let (_dir, catalog) = setup();
    for name in [
        "passwd-link",
        "secret-link",
        "sub/relative-out",
        "slash/etc/passwd",
    ] {
        assert!(
            matches!(catalog.lookup(name), Err(CatalogError::OutsideRoot { .. })),
            "{name}: {:?}",
            catalog.lookup(name)
        );
    }
}

#[test]
fn symlink_inside_the_root_is_served() {
    let (_dir, catalog) = setup();
    let file = catalog.lookup("inside-link").unwrap().file;
    assert_eq!(file.layout.file_size, 5);
    assert_eq!(file.digests, vec![*blake3::hash(b"hello").as_bytes()]);
}

#[test]
fn directories_and_missing_files_are_refused() {
    let (_dir, catalog) = setup();
    assert!(matches!(
        catalog.lookup("sub"),
        Err(CatalogError::NotRegularFile { .. })
    ));
    assert!(matches!(
        catalog.lookup("."),
        Err(CatalogError::OutsideRoot { .. })
    ));
    assert!(matches!(
        catalog.lookup("nope"),
        Err(CatalogError::NotFound { .. })
    ));
}

#[test]
fn digests_are_blake3_of_each_segment() {
    let (_dir, catalog) = setup();
    let file = catalog.lookup("a.bin").unwrap().file;
    let data = patterned(10_000, 1);
    assert_eq!(file.layout.segment_count, 3);
    assert_eq!(file.digests.len(), 3);
    for index in 0..3 {
        let (offset, len) = file.layout.segment_range(index).unwrap();
        let slice = &data[offset as usize..offset as usize + len];
        assert_eq!(
            file.digests[index as usize],
            *blake3::hash(slice).as_bytes()
        );
        assert_eq!(file.read_segment(index).unwrap(), slice);
    }
    // Cached: the same version is returned.
    let again = catalog.lookup("a.bin").unwrap();
    assert_eq!(again.file.generation, file.generation);
    assert!(again.replaced.is_none());
}

#[test]
fn empty_file_has_no_segment() {
    let (dir, catalog) = setup();
    std::fs::write(dir.path().join("root/empty"), b"").unwrap();
    let file = catalog.lookup("empty").unwrap().file;
    assert_eq!(file.layout.segment_count, 0);
    assert!(file.digests.is_empty());
}

#[test]
fn a_changed_file_is_noticed() {
    let (dir, catalog) = setup();
    let path = dir.path().join("root/a.bin");
    let first = catalog.lookup("a.bin").unwrap().file;
    assert!(catalog.check_changes().is_empty());
    // Replace the file (new inode) with other content.
    let tmp = dir.path().join("root/a.tmp");
    std::fs::write(&tmp, patterned(12_000, 2)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let changed = catalog.check_changes();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].generation, first.generation);
    let second = catalog.lookup("a.bin").unwrap();
    assert_ne!(second.file.generation, first.generation);
    assert_eq!(second.file.layout.file_size, 12_000);
    // And through lookup alone: append in place (same inode, new size).
    use std::io::Write as _;
    let mut handle = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    handle.write_all(b"more").unwrap();
    drop(handle);
    let third = catalog.lookup("a.bin").unwrap();
    assert_eq!(
        third.replaced.map(|old| old.generation),
        Some(second.file.generation)
    );
    assert_eq!(third.file.layout.file_size, 12_004);
}

#[test]
fn listing_shows_only_served_files() {
    let (_dir, catalog) = setup();
    let names: Vec<String> = catalog
        .list()
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["a.bin", "inside-link", "sub/b.bin"]);
}

#[test]
fn root_must_be_a_directory() {
    assert!(matches!(
        Catalog::open(Path::new("/nonexistent-ccfd-root"), coding(4096)),
        Err(CatalogError::Root { .. })
    ));
}

#[test]
fn concurrent_first_lookups_hash_once() {
    let (_dir, catalog) = setup();
    let generations: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| catalog.lookup("a.bin").unwrap().file.generation))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        generations.iter().all(|g| *g == generations[0]),
        "{generations:?}"
    );
}

#[test]
fn prehash_readies_every_file_and_lookups_reuse_it() {
    let (dir, catalog) = setup();
    // Many segments, so the digests are computed by several threads.
    let big = patterned(64 * 1024 + 17, 9);
    std::fs::write(dir.path().join("root/sub/many.bin"), &big).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // a.bin, sub/b.bin, sub/many.bin and inside-link (-> sub/b.bin); links out are skipped.
    assert_eq!(catalog.prehash(&stop), 4);
    let file = catalog.lookup("sub/many.bin").unwrap().file;
    assert_eq!(file.layout.segment_count, 17);
    for index in 0..file.layout.segment_count {
        let (offset, len) = file.layout.segment_range(index).unwrap();
        assert_eq!(
            file.digests[index as usize],
            *blake3::hash(&big[offset as usize..offset as usize + len]).as_bytes(),
            "segment {index}"
        );
    }
    let first = catalog.lookup("a.bin").unwrap();
    assert!(first.replaced.is_none());
    assert_eq!(
        catalog.lookup("a.bin").unwrap().file.generation,
        first.file.generation
    );
    // Stopped before it starts: nothing is hashed.
    let (_dir2, fresh) = setup();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fresh.prehash(&stop), 0);
}
