//! The browser dashboard's files (`dashboard/`), served over HTTP at `/`.
//!
//! By default the files are compiled into the binary, so a hub is one file to deploy and
//! the page always matches the hub that serves it. With `--dashboard-dir DIR` the folder
//! is served live from disk instead (edit, reload, no rebuild). Either way the page is
//! plain HTML, CSS and JavaScript modules: there is no build step.

use std::path::PathBuf;

use warp::filters::BoxedFilter;
use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use warp::http::Response;
use warp::{Filter, Rejection, Reply};

/// One embedded file: its name under `/`, its content type and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            body: include_str!(concat!("../../dashboard/", $name)),
        }
    };
}

/// Every file of the page. A module that is not listed here is a 404 in the embedded
/// build; the test below checks that every `import` resolves to a listed file.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("app.js", JS),
    asset!("alerts.js", JS),
    asset!("api.js", JS),
    asset!("auth.js", JS),
    asset!("axis.js", JS),
    asset!("chart.js", JS),
    asset!("colors.js", JS),
    asset!("format.js", JS),
    asset!("home.js", JS),
    asset!("kiosk.js", JS),
    asset!("layout.js", JS),
    asset!("panels.js", JS),
    asset!("perf.js", JS),
    asset!("room.js", JS),
    asset!("tiles.js", JS),
    asset!("timeline.js", JS),
    asset!("ws.js", JS),
    asset!("ws-worker.js", JS),
    asset!("zoom.js", JS),
];

/// GET / (index.html) and GET /{file}: the dashboard, embedded or from `dir`.
pub(crate) fn routes(
    dir: Option<PathBuf>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    match dir {
        Some(dir) => from_dir(dir),
        None => embedded(),
    }
}

/// The files compiled into the binary.
fn embedded() -> BoxedFilter<(Box<dyn Reply>,)> {
    warp::get()
        .and(warp::path::tail())
        .and_then(|tail: warp::path::Tail| async move {
            let name = match tail.as_str() {
                "" => "index.html",
                other => other,
            };
            match ASSETS.iter().find(|a| a.name == name) {
                Some(asset) => Ok(Box::new(asset_response(asset)) as Box<dyn Reply>),
                None => Err(warp::reject::not_found()),
            }
        })
        .boxed()
}

fn asset_response(asset: &Asset) -> Response<String> {
    let mut resp = Response::new(asset.body.to_string());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // The page is small and must match the hub that serves it: always revalidate.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The folder `dir`, read from disk on every request (for editing the page).
fn from_dir(dir: PathBuf) -> BoxedFilter<(Box<dyn Reply>,)> {
    let index = warp::path::end()
        .and(warp::get())
        .and(warp::fs::file(dir.join("index.html")));
    index
        .or(warp::fs::dir(dir))
        .unify()
        .map(|file: warp::fs::File| {
            Box::new(warp::reply::with_header(file, CACHE_CONTROL, "no-cache")) as Box<dyn Reply>
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(dir: Option<PathBuf>, path: &str) -> (u16, String, String) {
        let resp = warp::test::request().path(path).reply(&routes(dir)).await;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = String::from_utf8_lossy(resp.body()).to_string();
        (resp.status().as_u16(), ct, body)
    }

    #[tokio::test]
    async fn root_serves_the_index_and_files_have_their_types() {
        let (status, ct, body) = get(None, "/").await;
        assert_eq!(status, 200);
        assert_eq!(ct, HTML);
        assert!(body.contains(r#"<script type="module" src="app.js">"#));
        let (status, ct, _) = get(None, "/app.js").await;
        assert_eq!((status, ct.as_str()), (200, JS));
        let (status, ct, _) = get(None, "/style.css").await;
        assert_eq!((status, ct.as_str()), (200, CSS));
        assert_eq!(get(None, "/nope.js").await.0, 404);
        assert_eq!(get(None, "/../Cargo.toml").await.0, 404);
    }

    #[test]
    fn every_module_import_is_embedded() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in asset.body.lines() {
                let line = line.trim();
                if !line.starts_with("import ") {
                    continue;
                }
                let Some(spec) = line.split(" from ").nth(1) else {
                    continue;
                };
                let spec = spec.trim_matches(|c| c == '"' || c == ';' || c == '\'');
                let name = spec.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {spec}, which is not in dashboard::ASSETS",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn every_file_in_the_folder_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard");
        for entry in std::fs::read_dir(dir).expect("dashboard/ exists") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .to_string();
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "dashboard/{name} is not in dashboard::ASSETS"
            );
        }
    }

    #[tokio::test]
    async fn a_folder_is_served_live() {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard"));
        let (status, ct, body) = get(Some(dir.clone()), "/").await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(body.contains("app.js"));
        let (status, ct, _) = get(Some(dir), "/chart.js").await;
        assert_eq!(status, 200);
        assert!(ct.contains("javascript"), "{ct}");
    }
}
