# A stand-in for `import nixpkgs { system; overlays; }`, for tests/nix/eval.nix: just enough of
# pkgs for flake.nix, nix/package.nix, module.nix and nix/tests/vm.nix to evaluate without
# nixpkgs. Builders return their arguments (to inspect) marked as derivations; nothing is built.
{
  system ? "x86_64-linux",
  # as nixpkgs' `crossSystem`: the platform packages are built for (a system name here)
  crossSystem ? null,
  overlays ? [ ],
  lib ? import ../../../../shared/nixpkgs-lib/lib,
  ...
}:

let
  inherit (lib) types;

  hostSystem = if crossSystem != null then crossSystem else system;

  # Store paths tell the platform apart: 000… for x86_64-linux, 111… for aarch64-linux.
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    system = hostSystem;
    outPath = "/nix/store/${
      if hostSystem == "aarch64-linux" then "1" else "0"
    }0000000000000000000000000000000-${name}";
  };

  # lib.systems platforms are too much for the stub: a system name and canExecute (the same
  # system only; the real one also runs e.g. i686 on x86_64).
  platform = s: {
    system = s;
    canExecute = other: other.system == s;
  };

  # pkgs.formats.toml: the same value type; `generate` keeps the value and refuses what TOML
  # cannot hold
  tomlValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf tomlValue)
        (types.listOf tomlValue)
      ]
    )
    // {
      description = "TOML value";
    };
  assertToml =
    path: v:
    if v == null then
      throw "stub formats.toml: null at ${path} cannot be written to TOML"
    else if builtins.isAttrs v then
      lib.all lib.id (lib.mapAttrsToList (n: assertToml "${path}.${n}") v)
    else if builtins.isList v then
      lib.all lib.id (lib.imap0 (i: assertToml "${path}[${toString i}]") v)
    else if builtins.isFunction v then
      throw "stub formats.toml: function at ${path}"
    else
      true;

  base = final: {
    inherit lib;
    system = hostSystem;
    stdenv = {
      buildPlatform = platform system;
      hostPlatform = platform hostSystem;
    };
    # the build machine's packages, with the same overlays (as in nixpkgs)
    buildPackages =
      if crossSystem == null then
        final
      else
        import ./. {
          inherit system overlays lib;
        };
    callPackage =
      fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) final // args);

    rustPlatform.buildRustPackage =
      args:
      fakeDrv "${args.pname}-${args.version}"
      // {
        inherit args;
        inherit (args) meta;
      };
    mkShell = args: fakeDrv "nix-shell" // { inherit args; };
    testers.runNixOSTest = test: fakeDrv "vm-test-run-${test.name}" // { inherit test; };
    runCommand =
      name: env: script:
      fakeDrv name // { inherit env script; };
    runCommandLocal =
      name: env: script:
      fakeDrv name
      // {
        inherit env script;
        local = true;
      };
    formats.toml =
      { }:
      {
        type = types.attrsOf tomlValue;
        generate =
          name: value:
          assert assertToml "settings" value;
          fakeDrv name // { inherit value; };
      };

    writeShellScript = name: text: fakeDrv name // { inherit text; };
    writeShellScriptBin =
      name: text:
      fakeDrv name
      // {
        inherit text;
        meta.mainProgram = name;
      };

    coreutils = fakeDrv "coreutils-9.7";
    systemd = fakeDrv "systemd-258.2";
    util-linux = fakeDrv "util-linux-2.41.2";
    etcd = fakeDrv "etcd-3.5.21";
    postgresql = fakeDrv "postgresql-17.6";
    postgresql_16 = fakeDrv "postgresql-16.10";
    postgresql_17 = final.postgresql;
    postgresql_18 = fakeDrv "postgresql-18.1";
    # as nixpkgs' postgresql.withJIT: LLVM's JIT built in; `withoutJIT` leads back
    postgresql_17_jit = fakeDrv "postgresql-17.6-jit" // {
      withoutJIT = final.postgresql;
    };
    curl = fakeDrv "curl-8.14.1";
    jq = fakeDrv "jq-1.8.1";
    nixfmt = fakeDrv "nixfmt-1.1.0";
    clippy = fakeDrv "clippy-1.91.1";
    rustfmt = fakeDrv "rustfmt-1.91.1";
    rust-analyzer = fakeDrv "rust-analyzer-2025-11-10";
  };
in
lib.fix (final: lib.foldl' (prev: overlay: prev // overlay final prev) (base final) overlays)
