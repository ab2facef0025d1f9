//! The s3 job kind against a real S3 server process (moto in server mode), through a
//! counting, fault-injecting proxy process (tests/s3/proxy.py).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use backuphub::kinds::s3::client::S3;
use common::s3::{ACCESS_KEY, Moto, Proxy, SECRET_KEY};
use common::{Env, noise, text};

fn client(url: &str) -> S3 {
    S3::connect(
        url,
        "us-east-1",
        true,
        ACCESS_KEY,
        SECRET_KEY,
        Duration::from_secs(30),
        3,
    )
    .unwrap()
}

fn put(
    s3: &S3,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    meta: &[(&str, &str)],
) {
    let m: std::collections::HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s3.rt
        .block_on(
            s3.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body))
                .set_content_type(content_type.map(str::to_string))
                .set_metadata(Some(m))
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

fn put_multipart(s3: &S3, bucket: &str, key: &str, body: &[u8]) {
    let c = &s3.client;
    let id = s3
        .rt
        .block_on(
            c.create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .content_type("application/x-tar")
                .send(),
        )
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut parts = Vec::new();
    for (i, part) in body.chunks(6 << 20).enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .rt
            .block_on(
                c.upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(part.to_vec()))
                    .send(),
            )
            .unwrap();
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
    }
    let done = s3.rt.block_on(
        c.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send(),
    );
    // moto answers a `CompleteMultipartUploadResponse` root element, which the SDK does
    // not parse; the upload is done all the same (checked by the listing below).
    if let Err(e) = done {
        assert_eq!(
            e.raw_response().map(|r| r.status().as_u16()),
            Some(200),
            "{e:?}"
        );
    }
}

fn create_bucket(s3: &S3, b: &str) {
    s3.rt
        .block_on(s3.client.create_bucket().bucket(b).send())
        .unwrap();
}

/// Every object of a bucket: key → (body, content type, user metadata, ETag).
type Objects = BTreeMap<String, (Vec<u8>, Option<String>, BTreeMap<String, String>, String)>;

fn contents(s3: &S3, bucket: &str) -> Objects {
    let mut out = BTreeMap::new();
    let mut token = None;
    loop {
        let (items, next) = s3.list_page(bucket, token).unwrap();
        for o in items {
            let r = s3
                .rt
                .block_on(s3.client.get_object().bucket(bucket).key(&o.key).send())
                .unwrap();
            let ct = r.content_type().map(str::to_string);
            let meta: BTreeMap<String, String> = r
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let etag = r.e_tag().unwrap_or_default().to_string();
            let body = s3
                .rt
                .block_on(r.body.collect())
                .unwrap()
                .into_bytes()
                .to_vec();
            out.insert(o.key, (body, ct, meta, etag));
        }
        match next {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

const AWKWARD: &[&str] = &[
    "a//b/../c/",
    "space name.txt",
    "unicode/Grüße ☃.txt",
    "trailing/",
    "/leading",
    "..",
    "%percent%2F",
];

fn config(env: &Env, endpoint: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(env.path("ak"), ACCESS_KEY).unwrap();
    std::fs::write(env.path("sk"), SECRET_KEY).unwrap();
    let c = env.path("config.toml");
    std::fs::write(
        &c,
        format!(
            "[repository]\npath = \"{}\"\ncreate = true\nstate_dir = \"{}\"\n[daemon]\nattempts = 1\nmin_free_space = \"1 KiB\"\n[jobs.rgw]\nkind = \"s3\"\nschedule = \"@daily\"\nendpoint = \"{endpoint}\"\naccess_key_file = \"{}\"\nsecret_key_file = \"{}\"\nconcurrency = 4\nrequest_timeout_secs = 20\nretention = {{ keep_last = 10 }}\n{extra}\n",
            env.repo().display(),
            env.path("state").display(),
            env.path("ak").display(),
            env.path("sk").display()
        ),
    )
    .unwrap();
    c
}

fn run(env: &Env, c: &std::path::Path) -> (std::process::Output, serde_json::Value) {
    let out = env.run(&["run", "--config", c.to_str().unwrap(), "rgw", "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out, v)
}

fn gets(p: &Proxy) -> Vec<String> {
    p.requests()
        .into_iter()
        .filter(|l| l.contains("x-id=GetObject"))
        .collect()
}

#[test]
fn buckets_round_trip_incrementally_with_metadata_and_awkward_keys() {
    let env = Env::new();
    let moto = Moto::start();
    let s3 = client(&moto.url());
    create_bucket(&s3, "photos");
    create_bucket(&s3, "docs");
    for i in 0..1500u64 {
        let key = format!("dir{:02}/sub/obj{i:05}.txt", i % 20);
        let meta: &[(&str, &str)] = if i % 100 == 0 {
            &[("owner", "alice"), ("camera", "x100")]
        } else {
            &[]
        };
        put(
            &s3,
            "photos",
            &key,
            noise(200 + (i as usize % 7) * 300, i),
            Some("text/plain"),
            meta,
        );
    }
    for (i, k) in AWKWARD.iter().enumerate() {
        put(
            &s3,
            "photos",
            k,
            format!("awkward {i}").into_bytes(),
            Some("application/octet-stream"),
            &[("k", "v")],
        );
    }
    put(
        &s3,
        "photos",
        "empty/zero",
        Vec::new(),
        Some("application/x-empty"),
        &[],
    );
    let big = noise(17 << 20, 99);
    put_multipart(&s3, "photos", "big/archive.tar", &big);
    put(
        &s3,
        "docs",
        "readme.md",
        b"# docs".to_vec(),
        Some("text/markdown"),
        &[],
    );

    let proxy = Proxy::start(moto.port, env.dir.path(), &[]);
    // Both buckets, not the one the restore below creates.
    let c = config(&env, &proxy.url(), "buckets = [\"photos\", \"docs\"]");
    let (out, v) = run(&env, &c);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    let total = 1500 + AWKWARD.len() + 2 + 1;
    assert_eq!(v["stats"]["entries"], total as u64);
    assert!(!text(&out).contains(SECRET_KEY));
    let first = gets(&proxy);
    let first_gets = first.len();
    let mut seen = std::collections::BTreeSet::new();
    let repeated: Vec<&String> = first
        .iter()
        .filter(|g| !seen.insert(g.split(' ').nth(1)))
        .collect();
    assert_eq!(
        first_gets, total,
        "one GET per object; repeated: {repeated:?}"
    );

    // Into another bucket: identical bodies, content types and metadata.
    let out = env.run(&[
        "restore-s3",
        "latest:rgw",
        "--endpoint",
        &moto.url(),
        "--bucket",
        "restored",
        "--source-bucket",
        "photos",
        "--access-key-file",
        env.path("ak").to_str().unwrap(),
        "--secret-key-file",
        env.path("sk").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let original = contents(&s3, "photos");
    let restored = contents(&s3, "restored");
    assert_eq!(original.len(), restored.len());
    for (k, (body, ct, meta, etag)) in &original {
        let r = &restored[k];
        assert!(r.0 == *body, "{k}: body differs");
        assert_eq!(&r.1, ct, "{k}: content type");
        assert_eq!(&r.2, meta, "{k}: metadata");
        if !etag.contains('-') {
            assert_eq!(&r.3, etag, "{k}: ETag");
        }
    }
    assert!(
        original["big/archive.tar"].3.contains('-'),
        "the big object was a multipart upload"
    );
    // Again: everything is there already.
    let out = env.run(&[
        "restore-s3",
        "latest:rgw",
        "--endpoint",
        &moto.url(),
        "--bucket",
        "restored",
        "--source-bucket",
        "photos",
        "--access-key-file",
        env.path("ak").to_str().unwrap(),
        "--secret-key-file",
        env.path("sk").to_str().unwrap(),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["uploaded"], 0, "{r}");

    // A day later: three changed, two deleted, one new. Only four GETs.
    for i in [3u64, 400, 1400] {
        put(
            &s3,
            "photos",
            &format!("dir{:02}/sub/obj{i:05}.txt", i % 20),
            noise(999, i + 7),
            Some("text/plain"),
            &[],
        );
    }
    for i in [5u64, 6] {
        s3.rt
            .block_on(
                s3.client
                    .delete_object()
                    .bucket("photos")
                    .key(format!("dir{:02}/sub/obj{i:05}.txt", i % 20))
                    .send(),
            )
            .unwrap();
    }
    put(&s3, "photos", "new/object", b"new".to_vec(), None, &[]);
    let (_, v2) = run(&env, &c);
    assert_eq!(v2["status"], "complete", "{v2}");
    let second: Vec<String> = gets(&proxy).into_iter().skip(first_gets).collect();
    assert_eq!(
        second.len(),
        4,
        "only changed and new objects are downloaded: {second:?}"
    );
    let latest: Vec<serde_json::Value> =
        serde_json::from_slice(&env.ok(&["ls", "latest:rgw", "--json"]).stdout).unwrap();
    let keys: Vec<&str> = latest
        .iter()
        .filter_map(|e| e["meta"]["key"].as_str())
        .collect();
    assert!(!keys.contains(&"dir05/sub/obj00005.txt") && keys.contains(&"new/object"));
    let snaps: Vec<serde_json::Value> =
        serde_json::from_slice(&env.ok(&["snapshots", "--json"]).stdout).unwrap();
    let first_id = snaps[0]["id"].as_str().unwrap();
    let old: Vec<serde_json::Value> =
        serde_json::from_slice(&env.ok(&["ls", first_id, "--json"]).stdout).unwrap();
    assert!(
        old.iter()
            .any(|e| e["meta"]["key"] == "dir05/sub/obj00005.txt"),
        "the deleted object stays in the old snapshot"
    );
    let meta = &latest
        .iter()
        .find(|e| e["meta"]["key"] == "dir00/sub/obj00000.txt")
        .unwrap()["meta"];
    assert_eq!(
        meta["x-amz-meta-owner"], "alice",
        "metadata kept for unchanged objects: {meta}"
    );
    assert_eq!(meta["content_type"], "text/plain");

    // Plain restore: keys that are no paths land at their escapes, inside the target.
    let t = env.path("files");
    env.ok(&["restore", "latest:rgw", "--target", t.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(t.join("photos/a/%/b/%2E%2E/c/%")).unwrap(),
        b"awkward 0"
    );
    assert_eq!(
        std::fs::read(t.join("photos/%/leading")).unwrap(),
        b"awkward 4"
    );
    assert_eq!(
        std::fs::read(t.join("photos/%2E%2E")).unwrap(),
        b"awkward 5"
    );
    assert_eq!(
        std::fs::read(t.join("photos/big/archive.tar")).unwrap(),
        big
    );
    assert_eq!(std::fs::read(t.join("docs/readme.md")).unwrap(), b"# docs");
}

#[test]
fn server_errors_and_cut_bodies_are_retried_then_named_never_complete() {
    let env = Env::new();
    let mut moto = Moto::start();
    let s3 = client(&moto.url());
    create_bucket(&s3, "bkt");
    for k in ["flaky", "cut", "broken", "fine"] {
        put(&s3, "bkt", k, noise(300_000, k.len() as u64), None, &[]);
    }
    // Two 500s then fine; a body cut in half once, then resumed; one that always fails.
    let proxy = Proxy::start(
        moto.port,
        env.dir.path(),
        &[
            "--fail",
            "/bkt/flaky:2",
            "--truncate",
            "/bkt/cut:1",
            "--fail",
            "/bkt/broken:99",
        ],
    );
    let c = config(&env, &proxy.url(), "buckets = [\"bkt\"]\nattempts = 3");
    let (out, v) = run(&env, &c);
    assert_eq!(v["status"], "partial", "{v}: {}", text(&out));
    assert_eq!(v["stats"]["failures"], 1, "{v}");
    let log = text(&out);
    assert!(log.contains("bkt/broken") && log.contains("500"), "{log}");
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|r| r.contains("/bkt/cut") && r.ends_with("truncated")),
        "{reqs:?}"
    );
    let t = env.path("out");
    env.ok(&["restore", "latest:rgw", "--target", t.to_str().unwrap()]);
    for k in ["flaky", "cut", "fine"] {
        assert_eq!(
            std::fs::read(t.join("bkt").join(k)).unwrap(),
            noise(300_000, k.len() as u64),
            "{k}"
        );
    }
    assert!(!t.join("bkt/broken").exists());

    // The server goes away mid-run (after two objects): never complete.
    let fresh = Env::new();
    let dying = Proxy::start(moto.port, fresh.dir.path(), &["--die-after", "2"]);
    let c = config(&fresh, &dying.url(), "buckets = [\"bkt\"]\nattempts = 2");
    let (out, v) = run(&fresh, &c);
    assert_ne!(v["status"], "complete", "{v}: {}", text(&out));
    assert!(dying.requests().iter().any(|l| l == "DIED"));
    if v["status"] == "partial" {
        assert!(v["stats"]["failures"].as_u64().unwrap() >= 1, "{v}");
    } else {
        let snaps = fresh.run(&["snapshots", "--json"]);
        assert!(
            !String::from_utf8_lossy(&snaps.stdout).contains("\"job\""),
            "a failed run writes no snapshot"
        );
    }

    // A missing bucket and a stopped server fail the run, naming the bucket.
    let c = config(&env, &moto.url(), "buckets = [\"nope\"]");
    let (_, v) = run(&env, &c);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"nope\""), "{v}");
    moto.stop();
    let c = config(&env, &moto.url(), "buckets = [\"bkt\"]\nattempts = 1");
    let (_, v) = run(&env, &c);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("\"bkt\""), "{v}");
}
