{
  lib,
  rustPlatform,
}:

let
  fs = lib.fileset;
  cargoToml = lib.importTOML ../Cargo.toml;

  # Integration tests that need no network and no servers: tests/repo_*.rs and tests/cli_*.rs
  # (also as tests/<name>/main.rs). Those in pg_*, s3_* and daemon_* need PostgreSQL, S3 or a
  # running daemon and are left to CI outside Nix. Listed at evaluation time because cargo fails
  # on a `--test` pattern that matches nothing.
  testDir = ../tests;
  offlineTests = lib.pipe (if builtins.pathExists testDir then builtins.readDir testDir else { }) [
    (lib.mapAttrsToList (
      name: type:
      if type == "regular" && lib.hasSuffix ".rs" name then
        lib.removeSuffix ".rs" name
      else if type == "directory" && builtins.pathExists (testDir + "/${name}/main.rs") then
        name
      else
        null
    ))
    (lib.filter (name: name != null && (lib.hasPrefix "repo_" name || lib.hasPrefix "cli_" name)))
  ];
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;

  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      # askama.toml: where the web UI's templates are (src/web/templates).
      (fs.maybeMissing ../askama.toml)
      (fs.maybeMissing ../build.rs)
      (fs.difference (fs.maybeMissing ../tests) (fs.maybeMissing ../tests/nix))
      (fs.maybeMissing ../benches)
      (fs.maybeMissing ../examples)
      # docs/openapi.json: a unit test checks the router against it.
      (fs.maybeMissing ../docs)
      # The monitoring and cluster files that postInstall installs into share/backuphub.
      (fs.maybeMissing ../dashboards)
      (fs.maybeMissing ../alerts)
      (fs.maybeMissing ../deploy)
    ];
  };

  # No git dependencies in Cargo.lock, so no output hashes to keep.
  cargoLock.lockFile = ../Cargo.lock;

  # No pkg-config: zstd-sys builds zstd from its vendored C source with the cc crate.

  # `cargo test --lib --test repo_… --test cli_…`
  cargoTestFlags = [ "--lib" ] ++ map (name: "--test=${name}") offlineTests;

  # For the machines that watch the daemon (NixOS module: services.backuphub.monitoring) and
  # the cluster it backs up: the Grafana dashboard, the alert rules (Prometheus, and the same
  # as Grafana-managed rules) and the Kubernetes RBAC manifests with make-kubeconfig.sh.
  postInstall = ''
    install -Dm644 dashboards/backuphub.json -t $out/share/backuphub/dashboards
    install -Dm644 alerts/backuphub.rules.yml alerts/grafana-provisioning.yml \
      -t $out/share/backuphub/alerts
    install -Dm644 deploy/kubernetes/*.yaml -t $out/share/backuphub/kubernetes
    install -Dm755 deploy/kubernetes/make-kubeconfig.sh -t $out/share/backuphub/kubernetes
  '';

  meta = {
    # Cargo.toml is the one source: what this release does (path, command, postgres,
    # kubernetes, s3 and volume jobs), where it lives, and its licence (LICENSE, Apache-2.0).
    description = cargoToml.package.description;
    homepage = cargoToml.package.homepage or cargoToml.package.repository;
    license = lib.licenses.asl20;
    mainProgram = "backuphub";
    platforms = lib.platforms.linux;
  };
}
