//! docs/openapi.json is what the code generates: this test fails when a
//! type of the API changes and the committed document was not regenerated.
//! Regenerate with `KEYWARD_BLESS=1 cargo test -p keyward-api --test openapi`.

use std::path::Path;

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = keyward_api::openapi::document();
    if std::env::var_os("KEYWARD_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json does not match the API types; regenerate it with \
         `KEYWARD_BLESS=1 cargo test -p keyward-api --test openapi` and commit it.\n\
         first difference at line {}",
        committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1
            )
    );
}
