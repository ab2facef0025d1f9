# NixOS module: services.backuphub
#
# Used as `nixosModules.default` of this repository's flake. The default package is
# `pkgs.backuphub`, which the flake's `overlays.default` provides. The manual chapter is
# nix/module.md (meta.doc).
{
  config,
  options,
  lib,
  pkgs,
  ...
}:

let
  # Secret files: absolute paths outside the Nix store, never copied into it.
  secretPath = lib.types.pathWith {
    inStore = false;
    absolute = true;
  };
  inherit (lib)
    mkOption
    mkEnableOption
    mkPackageOption
    mkIf
    mkDefault
    types
    literalExpression
    ;

  cfg = config.services.backuphub;

  # A file the package installs in share/backuphub, offered read-only to other hosts' config.
  shareFile =
    file: description:
    mkOption {
      type = types.pathInStore;
      readOnly = true;
      default = "${cfg.package}/share/backuphub/${file}";
      defaultText = literalExpression ''"''${config.services.backuphub.package}/share/backuphub/${file}"'';
      inherit description;
    };

  settingsFormat = pkgs.formats.toml { };

  # systemd exposes the files of `LoadCredential=` here (for the unit backuphub.service).
  credentialsDirectory = "/run/credentials/backuphub.service";

  defaultStateDir = "/var/lib/backuphub";
  # HOME of the service and of the admin command: CacheDirectory=backuphub.
  homeDir = "/var/cache/backuphub";

  repoPath = cfg.settings.repository.path;
  stateDir = cfg.settings.repository.state_dir;
  customStateDir = stateDir != defaultStateDir;

  # ---------------------------------------------------------------- http.listen
  # The daemon takes a socket address, not a host name: "127.0.0.1:9750", "[::]:9750",
  # "[fe80::1%2]:9750". Parsed here without throwing, so that a bad value is an assertion
  # with a message rather than an evaluation error. The port may have leading zeros (the
  # daemon reads "0.0.0.0:09750" as port 9750); IPv4 octets may not (it rejects "010.0.0.1").
  listen = cfg.settings.http.listen;
  listenV4 = builtins.match "([0-9.]+):([0-9]{1,5})" listen;
  listenV6 = builtins.match "\\[([0-9A-Fa-f:.]+)(%[0-9]+)?]:([0-9]{1,5})" listen;
  octetOk = o: builtins.match "0|[1-9][0-9]{0,2}" o != null && lib.toIntBase10 o <= 255;
  v4HostOk =
    h:
    let
      octets = lib.splitString "." h;
    in
    lib.length octets == 4 && lib.all octetOk octets;
  listenParsed =
    if lib.isString listen && listenV4 != null && v4HostOk (lib.elemAt listenV4 0) then
      {
        host = lib.elemAt listenV4 0;
        port = lib.toIntBase10 (lib.elemAt listenV4 1);
      }
    else if lib.isString listen && listenV6 != null && lib.hasInfix ":" (lib.elemAt listenV6 0) then
      {
        host = lib.elemAt listenV6 0;
        port = lib.toIntBase10 (lib.elemAt listenV6 2);
      }
    else
      null;
  listenValid = listenParsed != null && listenParsed.port >= 1 && listenParsed.port <= 65535;
  listenPort = if listenParsed != null then listenParsed.port else 0;
  listenPortString = if listenParsed != null then toString listenPort else "9750";
  listenIsLoopback =
    listenParsed != null && (listenParsed.host == "::1" || lib.hasPrefix "127." listenParsed.host);

  # ---------------------------------------------------------------- paths
  isAbsolute = p: lib.isString p && lib.hasPrefix "/" p;
  inStore = p: lib.isString p && lib.hasPrefix "${builtins.storeDir}/" p;
  jobs = cfg.settings.jobs;
  pathJobs = lib.filterAttrs (_: j: j.kind == "path") jobs;
  commandJobs = lib.filterAttrs (_: j: j.kind == "command") jobs;
  postgresJobs = lib.filterAttrs (_: j: j.kind == "postgres") jobs;
  kubernetesJobs = lib.filterAttrs (_: j: j.kind == "kubernetes") jobs;
  volumeJobs = lib.filterAttrs (_: j: j.kind == "volume") jobs;
  s3Jobs = lib.filterAttrs (_: j: j.kind == "s3") jobs;
  jobPaths = lib.concatLists (
    lib.mapAttrsToList (_: j: lib.filter lib.isString (lib.toList (j.paths or [ ]))) pathJobs
  );
  # /home, /root and /run/user are hidden by ProtectHome=true; a path job below them gets
  # them read-only instead.
  homePaths = [
    "/home"
    "/root"
    "/run/user"
  ];
  backsUpHomes = lib.any (p: lib.any (h: p == h || lib.hasPrefix "${h}/" p) homePaths) jobPaths;

  # ---------------------------------------------------------------- postgres jobs
  # A drill.work_dir set by hand outside what the unit may write anyway (the repository, the
  # state and cache directories, its private /tmp and /var/tmp): made writable, its mount
  # required, and created before the sandbox is set up when missing (ReadWritePaths= of a
  # missing directory fails the unit). An existing one, maybe a shared scratch directory, keeps
  # its owner and mode: it must let the service user create directories in it.
  writableDirs = lib.filter lib.isString [
    repoPath
    stateDir
    defaultStateDir
    homeDir
    "/tmp"
    "/var/tmp"
  ];
  isBelow = root: p: p == root || lib.hasPrefix "${lib.removeSuffix "/" root}/" p;
  extraDrillWorkDirs = lib.unique (
    lib.filter (d: isAbsolute d && !inStore d && !lib.any (r: isBelow r d) writableDirs) (
      lib.mapAttrsToList (
        _: j:
        let
          drill = j.drill or null;
        in
        if lib.isAttrs drill then drill.work_dir or null else null
      ) postgresJobs
    )
  );
  createDrillWorkDirs = pkgs.writeShellScript "backuphub-drill-work-dirs" ''
    set -eu
    for d in ${lib.escapeShellArgs extraDrillWorkDirs}; do
      if [ ! -d "$d" ]; then
        ${pkgs.coreutils}/bin/install -d -m 0700 -o ${cfg.user} -g ${cfg.group} "$d"
      fi
    done
  '';

  # The drill's throwaway server (initdb, postgres) runs inside the unit's sandbox, where
  # MemoryDenyWriteExecute= breaks LLVM's JIT (as it would in NixOS's postgresql.service): the
  # module hands the daemon the same PostgreSQL without JIT, which a throwaway server does not
  # need. A package without `withoutJIT` (not from nixpkgs' postgresql) is used as it is.
  withoutJIT = p: p.withoutJIT or p;
  # bin_dirs of a postgres job that sets none: every major version the module offers; the
  # daemon picks, per server, the oldest client at least as new as the server.
  postgresqlBinDirs = map (p: "${withoutJIT p}/bin") (
    lib.optional (cfg.postgresqlPackage != null) cfg.postgresqlPackage ++ cfg.postgresqlClientPackages
  );
  # Where drills build their throwaway cluster unless the job says otherwise: in the state
  # directory, which the unit may write (StateDirectory= or ReadWritePaths=), rather than in /tmp
  # (the daemon's default), which is private to the unit and a small tmpfs on many systems.
  # (Drill results go to <state_dir>/drills.)
  drillWorkDir = "${stateDir}/drill";

  # What the module fills in for a postgres job, where the job does not set it itself
  # (`null` there keeps the daemon's own default: PATH, the system's temporary directory).
  withPostgresDefaults =
    job:
    let
      drill = job.drill or null;
      ownBinDirs = job ? bin_dirs;
    in
    lib.optionalAttrs (postgresqlBinDirs != [ ]) { bin_dirs = postgresqlBinDirs; }
    // job
    // lib.optionalAttrs (lib.isAttrs drill) {
      drill =
        { work_dir = drillWorkDir; }
        # With one version the drill's server is postgresqlPackage's. With several (extra client
        # packages, or the job's own bin_dirs) the daemon picks, per snapshot, the oldest server
        # among bin_dirs and PATH that is at least as new as the dumped one.
        // lib.optionalAttrs (
          !ownBinDirs && cfg.postgresqlPackage != null && cfg.postgresqlClientPackages == [ ]
        ) { server_bin_dir = "${withoutJIT cfg.postgresqlPackage}/bin"; }
        // drill;
    };

  # ---------------------------------------------------------------- the configuration file
  # TOML has no null: drop unset optional values (repository.path stays unset only in a
  # configuration that fails its assertions anyway).
  finalSettings = lib.filterAttrsRecursive (_: v: v != null) (
    cfg.settings
    // {
      jobs = lib.mapAttrs (_: j: if j.kind == "postgres" then withPostgresDefaults j else j) jobs;
    }
  );

  configFile = settingsFormat.generate "backuphub.toml" finalSettings;

  # Build-time validation, as the ntpd-rs module does: a configuration the daemon would reject
  # fails `nixos-rebuild` instead of the service at boot. It runs on the build machine, so a
  # cross-compiled system (an aarch64 Pi built on x86_64) is checked with the build platform's
  # backuphub from pkgs.buildPackages, as the man-db and OpenSSH modules do.
  canRunPackage = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
  checkPackage =
    if canRunPackage then
      cfg.package
    else if pkgs.buildPackages ? backuphub then
      pkgs.buildPackages.backuphub
    else
      null;
  checkedConfigFile =
    if cfg.checkConfig && checkPackage != null then
      pkgs.runCommandLocal "backuphub-config-checked" { } ''
        ${lib.getExe checkPackage} config check --config ${configFile}
        cp ${configFile} $out
      ''
    else
      configFile;

  jobKinds = [
    "path"
    "command"
    "postgres"
    "kubernetes"
    "volume"
    "s3"
  ];

  jobModule =
    { name, ... }:
    {
      freeformType = settingsFormat.type;
      options = {
        kind = mkOption {
          type = types.enum jobKinds;
          description = ''
            What the job backs up. `path`: files and directories (`paths`, absolute, optional
            `exclude`). `command`: the standard output of a command (`command`, a list of
            arguments, and `name`, the file name of the stream in the snapshot); the command runs
            inside the service's sandbox (see `services.backuphub.extraPackages` and the
            module's documentation). `postgres`: the databases of a PostgreSQL server (`host`,
            `user`, optional `password_file`, `databases`, `format`, … and an optional restore
            `drill`); the module fills in `bin_dirs` and the drill's `server_bin_dir` and
            `work_dir` (see `services.backuphub.postgresqlPackage`). `kubernetes`: the objects
            of a cluster's API, as YAML (`kubeconfig`, or `server`, `token_file` and optional
            `ca_file`; `include_namespaces`, `exclude_namespaces`, `include_resources`,
            `exclude_resources`, `label_selector`, `cluster_scoped`, …); the kubeconfig or the
            token is a secret: pass it with `services.backuphub.credentials`. `volume`: the
            contents of a cluster's PersistentVolumeClaims, read from a CSI snapshot by a
            short-lived pod (the same connection keys as `kubernetes`; `volumes`, a list of
            `"namespace/pvc"`, and/or `selector`; `snapshot_class`, `reader_image`, `include`,
            `exclude`, `snapshot_timeout_secs`, `pod_timeout_secs`). `s3`: the objects
            of an S3 server's buckets, such as Ceph RGW or MinIO (`endpoint`, `access_key_file`,
            `secret_key_file`; `region`, `path_style`, `buckets`, `include`, `exclude`,
            `concurrency`, `attempts`, `request_timeout_secs`); both keys are secrets: pass them
            with `services.backuphub.credentials`.
          '';
          example = "path";
        };
        schedule = mkOption {
          type = types.str;
          description = ''
            When the job runs: a cron expression with seconds
            (`second minute hour day-of-month month day-of-week`), one without
            (`minute hour day-of-month month day-of-week`) or an alias (`@daily`, `@hourly`, …).
          '';
          example = "0 0 2 * * *";
        };
        timezone = mkOption {
          type = types.str;
          default = "UTC";
          description = "The IANA time zone `schedule` is read in (checked by `checkConfig`).";
          example = "Europe/Berlin";
        };
      };
    };

  cronAliases = [
    "@yearly"
    "@annually"
    "@monthly"
    "@weekly"
    "@daily"
    "@midnight"
    "@hourly"
  ];
  scheduleShapeOk =
    s:
    let
      fields = lib.filter (f: f != "") (lib.splitString " " (lib.replaceStrings [ "\t" ] [ " " ] s));
    in
    lib.elem (lib.toLower (lib.trim s)) cronAliases || lib.elem (lib.length fields) [
      5
      6
    ];

  # What the daemon accepts as `name` of a command job: a relative file name without empty,
  # "." or ".." components.
  safeRelativeName =
    n:
    lib.isString n
    && n != ""
    && !lib.hasPrefix "/" n
    && lib.all (c: c != "" && c != "." && c != "..") (lib.splitString "/" n);

  # A setting that names a file: a string, absolute. A Nix path (`./token`) would be copied
  # into the world-readable store, and a relative string would be read relative to the
  # configuration file, which is in the store too.
  fileSettingAssertions =
    key: value:
    [
      {
        assertion = !(builtins.isPath value);
        message = "services.backuphub.settings.${key} is a Nix path (${toString value}), which would be copied into the world-readable Nix store: give it as a string, \"/path/outside/the/store\".";
      }
      {
        assertion = builtins.isPath value || isAbsolute value;
        message = "services.backuphub.settings.${key} must be an absolute path, not \"${toString value}\" (a relative path would be read relative to the configuration file in the Nix store).";
      }
    ];

  secretSettingAssertions =
    key: value:
    fileSettingAssertions key value
    ++ [
      {
        assertion = !inStore value;
        message = "services.backuphub.settings.${key} = \"${toString value}\" is in the world-readable Nix store; pass the secret with services.backuphub.credentials and use \"${credentialsDirectory}/<name>\".";
      }
    ];

  optionalFileAssertions =
    check: key: value:
    lib.optionals (value != null) (check key value);

  # A directory setting (bin_dirs, drill.server_bin_dir, drill.work_dir): absolute, for the
  # same reason as above.
  dirSettingAssertion = key: value: {
    assertion = isAbsolute value;
    message = "services.backuphub.settings.${key} must be an absolute path, not ${
      if lib.isString value then "\"${value}\"" else "a ${builtins.typeOf value}"
    } (a relative path would be read relative to the configuration file in the Nix store).";
  };

  # The credential that a path below credentialsDirectory belongs to: "pg" for ".../pg" and
  # for ".../pg/password" (LoadCredential= of a directory loads the files in it).
  credentialOf =
    p:
    if lib.isString p && lib.hasPrefix "${credentialsDirectory}/" p then
      lib.head (lib.splitString "/" (lib.removePrefix "${credentialsDirectory}/" p))
    else
      null;
  # What the unit gets as credentials: services.backuphub.credentials, and LoadCredential= or
  # LoadCredentialEncrypted= set on the unit directly (e.g. for systemd-creds).
  unitCredentialNames =
    let
      sc = config.systemd.services.backuphub.serviceConfig;
      entries = lib.toList (sc.LoadCredential or [ ]) ++ lib.toList (sc.LoadCredentialEncrypted or [ ]);
    in
    lib.attrNames cfg.credentials
    ++ map (e: lib.head (lib.splitString ":" e)) (lib.filter lib.isString entries);

  # A file setting below credentialsDirectory must name a credential the unit gets.
  credentialAssertion =
    key: value: example:
    let
      credential = credentialOf value;
    in
    {
      assertion = credential == null || lib.elem credential unitCredentialNames;
      message = "services.backuphub.settings.${key} = \"${toString value}\" is the credential \"${toString credential}\", which the unit does not get: set services.backuphub.credentials.\"${toString credential}\" = \"${example}\" (outside the Nix store).";
    };

  # A secret file setting that is not a credential: readable by the service user, so by every
  # command job too.
  notCredentialWarning =
    key: value:
    lib.optional (isAbsolute value && credentialOf value == null && !inStore value)
      "services.backuphub.settings.${key} = \"${value}\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"${value}\" and set ${lib.last (lib.splitString "." key)} = \"${credentialsDirectory}/<name>\"; systemd then reads it as root and shows it to this service only.";

  nonEmptyString = v: lib.isString v && lib.trim v != "";

  # An integer setting of a job in [min, max] (max = null: no upper bound); null or unset is the
  # daemon's default.
  intSettingAssertion =
    prefix: job: key: min: max: default:
    let
      v = job.${key} or null;
    in
    {
      assertion = v == null || (lib.isInt v && v >= min && (max == null || v <= max));
      message = "${prefix}.${key} = ${lib.generators.toPretty { } v}: an integer ${
        if max == null then "of at least ${toString min}" else "from ${toString min} to ${toString max}"
      } (default ${toString default}).";
    };

  repoSettings = cfg.settings.repository;

  jobAssertions = lib.flatten (
    lib.mapAttrsToList (
      name: job:
      let
        prefix = "services.backuphub.settings.jobs.${name}";
        paths = job.paths or null;
        command = job.command or null;
      in
      [
        {
          assertion = builtins.match "[A-Za-z0-9_.-]{1,64}" name != null;
          message = "services.backuphub.settings.jobs.\"${name}\": a job name must be 1-64 characters of a-z, A-Z, 0-9, '-', '_' and '.' (it is also a metric label and a lock name).";
        }
        {
          assertion = scheduleShapeOk job.schedule;
          message = "${prefix}.schedule = \"${job.schedule}\": a cron expression has 6 fields (sec min hour day month weekday) or 5 (min hour day month weekday), or is an alias such as \"@daily\".";
        }
      ]
      ++ lib.optionals (job.kind == "path") (
        [
          {
            assertion = lib.isList paths && paths != [ ];
            message = "${prefix}: a job of kind \"path\" needs `paths`, a non-empty list of absolute paths.";
          }
        ]
        ++ lib.imap0 (
          i: p:
          {
            assertion = isAbsolute p;
            message = "${prefix}.paths: \"${toString p}\" (item ${toString i}) must be an absolute path (a relative one would be read relative to the configuration file in the Nix store).";
          }
        ) (if lib.isList paths then paths else [ ])
      )
      ++ lib.optionals (job.kind == "command") [
        {
          assertion =
            lib.isList command
            && command != [ ]
            && lib.all lib.isString command
            && lib.head command != "";
          message = "${prefix}: a job of kind \"command\" needs `command`, a non-empty list of strings whose first is the program (e.g. [ \"pg_dumpall\" \"-h\" \"/run/postgresql\" ]).";
        }
        {
          assertion = safeRelativeName (job.name or null);
          message = "${prefix}: a job of kind \"command\" needs `name`, the file name of its output in the snapshot (e.g. \"all.sql\"): relative, without empty, \".\" or \"..\" components.";
        }
      ]
      ++ lib.optionals (job.kind == "postgres") (postgresJobAssertions name job)
      ++ lib.optionals (job.kind == "kubernetes") (kubernetesJobAssertions name job)
      ++ lib.optionals (job.kind == "volume") (volumeJobAssertions name job)
      ++ lib.optionals (job.kind == "s3") (s3JobAssertions name job)
    ) jobs
  );

  postgresJobAssertions =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      host = job.host or null;
      format = job.format or "custom";
      sslmode = job.sslmode or "prefer";
      password = job.password_file or null;
      binDirs = job.bin_dirs or null;
      drill = job.drill or null;
      drillDir =
        key:
        lib.optional (lib.isAttrs drill && (drill.${key} or null) != null) (
          dirSettingAssertion "jobs.${name}.drill.${key}" drill.${key}
        );
    in
    [
      {
        assertion = nonEmptyString host && (lib.hasInfix "/" host -> isAbsolute host);
        message = "${prefix}: a job of kind \"postgres\" needs `host`: a host name, an IP address or the absolute path of the server's socket directory (e.g. \"db.lan\", \"10.0.0.21\", \"/run/postgresql\").";
      }
      {
        assertion = nonEmptyString (job.user or null);
        message = "${prefix}: a job of kind \"postgres\" needs `user`, the role it connects as (e.g. \"backup\").";
      }
      {
        assertion = lib.elem format [
          "custom"
          "plain"
          "ordered"
        ];
        message = "${prefix}.format = ${lib.generators.toPretty { } format}: one of \"custom\" (pg_dump -Fc, the default), \"plain\" (SQL) or \"ordered\" (SQL with rows in primary-key order, which deduplicates best).";
      }
      {
        assertion = lib.elem sslmode [
          "disable"
          "prefer"
          "require"
        ];
        message = "${prefix}.sslmode = ${lib.generators.toPretty { } sslmode}: one of \"disable\", \"prefer\" (the default) or \"require\".";
      }
      (credentialAssertion "jobs.${name}.password_file" password "/path/to/the/password-file")
      {
        assertion = drill == null || lib.isAttrs drill;
        message = "${prefix}.drill must be an attribute set (the [jobs.${name}.drill] table: schedule, checks, …), not a ${builtins.typeOf drill}.";
      }
    ]
    ++ optionalFileAssertions secretSettingAssertions "jobs.${name}.password_file" password
    ++ lib.imap0 (i: d: dirSettingAssertion "jobs.${name}.bin_dirs (item ${toString i})" d) (
      if lib.isList binDirs then binDirs else [ ]
    )
    ++ lib.optionals (lib.isAttrs drill) (
      [
        {
          assertion = lib.isString (drill.schedule or null) && scheduleShapeOk drill.schedule;
          message = "${prefix}.drill needs `schedule`, when the restore drill runs: a cron expression with 6 fields (sec min hour day month weekday) or 5, or an alias such as \"@weekly\" (e.g. \"0 0 5 * * Sun\"), not ${lib.generators.toPretty { } (drill.schedule or null)}.";
        }
        {
          assertion = !inStore (drill.work_dir or null);
          message = "${prefix}.drill.work_dir = \"${toString (drill.work_dir or "")}\" is in the read-only Nix store: the drill builds a PostgreSQL cluster there.";
        }
      ]
      ++ drillDir "server_bin_dir"
      ++ drillDir "work_dir"
    );

  # How a job reaches a cluster's API server, the same for kinds "kubernetes" and "volume" (the
  # daemon checks both with one Connection): a kubeconfig, or `server` and `token_file` (and
  # optionally `ca_file`). The kubeconfig and the token are secrets.
  kubeConnectionAssertions =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      kubeconfig = job.kubeconfig or null;
      server = job.server or null;
      token = job.token_file or null;
      ca = job.ca_file or null;
      hasKubeconfig = kubeconfig != null;
      hasServer = server != null;
      hasToken = token != null;
      intIn = intSettingAssertion prefix job;
    in
    [
      {
        assertion = hasKubeconfig || (hasServer && hasToken);
        message = "${prefix}: a job of kind \"${job.kind}\" needs `kubeconfig` (a kubeconfig file, passed as a credential: \"${credentialsDirectory}/kubeconfig\"), or `server` (the API server's URL) and `token_file` (a bearer token, passed as a credential)${
          if hasServer then
            "; `token_file` is missing"
          else if hasToken then
            "; `server` is missing"
          else
            ""
        }.";
      }
      {
        assertion = !(hasKubeconfig && (hasServer || hasToken));
        message = "${prefix}: give either `kubeconfig` or `server` and `token_file`, not both (the kubeconfig names its own server and credentials).";
      }
      {
        assertion =
          !hasServer
          || (lib.isString server && (lib.hasPrefix "https://" server || lib.hasPrefix "http://" server));
        message = "${prefix}.server = ${lib.generators.toPretty { } server}: the API server's URL, starting with https:// (or http://), e.g. \"https://10.0.0.10:6443\".";
      }
      # The daemon (Connection::validate, for both kinds) refuses ca_file beside a kubeconfig:
      # fail here, not in `config check` or (checkConfig off) when the service starts.
      {
        assertion = !(hasKubeconfig && ca != null);
        message = "${prefix}.ca_file goes with `server` and `token_file`, not with `kubeconfig`: the kubeconfig carries its own certificate-authority(-data). Put the CA into the kubeconfig, or drop ca_file.";
      }
      {
        assertion = (job.context or null) == null || hasKubeconfig;
        message = "${prefix}.context is set, but only a kubeconfig has contexts: use it with `kubeconfig`, not with `server` and `token_file`.";
      }
      (intIn "request_timeout_secs" 1 600 30)
      (credentialAssertion "jobs.${name}.kubeconfig" kubeconfig "/path/to/the/kubeconfig")
      (credentialAssertion "jobs.${name}.token_file" token "/path/to/the/token")
      (credentialAssertion "jobs.${name}.ca_file" ca "/path/to/the/ca.pem")
      # The CA certificate is public: a Nix path (./cluster-ca.pem) is copied into the store,
      # which does no harm, and is read from there.
      {
        assertion = ca == null || builtins.isPath ca || isAbsolute ca;
        message = "services.backuphub.settings.jobs.${name}.ca_file must be an absolute path (or a Nix path: the CA certificate is public), not ${lib.generators.toPretty { } ca} (a relative path would be read relative to the configuration file in the Nix store).";
      }
    ]
    ++ optionalFileAssertions secretSettingAssertions "jobs.${name}.kubeconfig" kubeconfig
    ++ optionalFileAssertions secretSettingAssertions "jobs.${name}.token_file" token;

  kubernetesJobAssertions =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      includeResources = job.include_resources or [ "*" ];
      intIn = intSettingAssertion prefix job;
    in
    kubeConnectionAssertions name job
    ++ [
      {
        assertion =
          lib.isList includeResources
          && includeResources != [ ]
          && lib.all lib.isString includeResources;
        message = "${prefix}.include_resources must be a non-empty list of globs over \"resource.group\" names (default [ \"*\" ]), not ${lib.generators.toPretty { } includeResources}.";
      }
      {
        assertion =
          !(lib.isList includeResources && lib.elem "secrets" includeResources) || settingsEncrypt;
        message = "${prefix}.include_resources names \"secrets\", but the repository is not encrypted (neither settings.repository.recipients nor settings.repository.recipients_file is set): Kubernetes Secrets go only into an encrypted repository, and the daemon refuses this configuration. Set repository.recipients, or leave \"secrets\" out (\"*\" never includes Secrets).";
      }
      (intIn "page_size" 1 10000 500)
    ];

  # Kubernetes' names, as the daemon checks them (VolumeRef): a namespace is a DNS label, a
  # PVC's name (and a VolumeSnapshotClass's) a DNS subdomain, such labels joined by ".".
  dnsLabelRegex = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";
  dnsSubdomainRegex = "${dnsLabelRegex}(\\.${dnsLabelRegex})*";
  isDnsSubdomain =
    s: lib.isString s && lib.stringLength s <= 253 && builtins.match dnsSubdomainRegex s != null;
  isVolumeRef =
    v:
    let
      m = if lib.isString v then builtins.match "(${dnsLabelRegex})/(.*)" v else null;
    in
    m != null && isDnsSubdomain (lib.last m);

  volumeJobAssertions =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      volumes = job.volumes or [ ];
      selector = job.selector or "";
      snapshotClass = job.snapshot_class or "";
      volumeList = if lib.isList volumes then volumes else [ ];
      named = lib.unique (lib.filter (v: lib.count (x: x == v) volumeList > 1) volumeList);
      intIn = intSettingAssertion prefix job;
    in
    kubeConnectionAssertions name job
    ++ [
      {
        assertion = lib.isList volumes;
        message = "${prefix}.volumes must be a list of \"namespace/pvc\" names (default [ ]), not ${lib.generators.toPretty { } volumes}.";
      }
      {
        assertion = lib.isString selector;
        message = "${prefix}.selector must be a label selector, a string (default \"\": none), not ${lib.generators.toPretty { } selector}.";
      }
      {
        assertion = volumeList != [ ] || nonEmptyString selector;
        message = "${prefix}: a job of kind \"volume\" needs `volumes`, a list of \"namespace/pvc\" names (e.g. [ \"immich/library\" ]), or `selector`, a label selector over the PVCs of every namespace (e.g. \"backuphub.io/backup=true\"); with neither, nothing would be backed up.";
      }
      {
        assertion = named == [ ];
        message = "${prefix}.volumes names ${lib.concatMapStringsSep ", " (v: lib.generators.toPretty { } v) named} more than once.";
      }
      {
        # "none" (the live volume) has the shape of a class name too
        assertion = snapshotClass == "" || isDnsSubdomain snapshotClass;
        message = "${prefix}.snapshot_class = ${lib.generators.toPretty { } snapshotClass}: \"\" (the default: the CSI driver's default VolumeSnapshotClass), \"none\" (the live volume, mounted read-only: not point-in-time) or the name of a VolumeSnapshotClass (a DNS subdomain, e.g. \"csi-rbdplugin-snapclass\").";
      }
      (intIn "snapshot_timeout_secs" 1 86400 600)
      (intIn "pod_timeout_secs" 1 86400 300)
    ]
    ++ lib.imap0 (i: v: {
      assertion = isVolumeRef v;
      message = "${prefix}.volumes: ${lib.generators.toPretty { } v} (item ${toString i}) is not \"namespace/pvc\": the namespace is a DNS label (lower-case letters, digits and '-', at most 63, e.g. \"immich\"), the PVC's name a DNS subdomain (such labels joined by '.', e.g. \"data-postgresql-0\").";
    }) volumeList;

  s3JobAssertions =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      endpoint = job.endpoint or null;
      accessKey = job.access_key_file or null;
      secretKey = job.secret_key_file or null;
      buckets = job.buckets or [ ];
      intIn = intSettingAssertion prefix job;
      # the access key and the secret key: required, and secrets
      keyFile =
        key: value:
        [
          {
            assertion = value != null;
            message = "${prefix}: a job of kind \"s3\" needs `${key}`, the file with the ${
              if key == "access_key_file" then "access key" else "secret key"
            } on its first line, passed as a credential (e.g. \"${credentialsDirectory}/rgw-${
              if key == "access_key_file" then "access-key" else "secret-key"
            }\").";
          }
          (credentialAssertion "jobs.${name}.${key}" value "/path/to/the/${
            lib.replaceStrings [ "_file" "_" ] [ "" "-" ] key
          }")
        ]
        ++ optionalFileAssertions secretSettingAssertions "jobs.${name}.${key}" value;
    in
    [
      {
        assertion = nonEmptyString endpoint;
        message = "${prefix}: a job of kind \"s3\" needs `endpoint`, the S3 server's URL (e.g. \"http://10.0.0.30:7480\" for Ceph RGW).";
      }
      {
        assertion =
          endpoint == null
          || (lib.isString endpoint && (lib.hasPrefix "https://" endpoint || lib.hasPrefix "http://" endpoint));
        message = "${prefix}.endpoint = ${lib.generators.toPretty { } endpoint}: the S3 server's URL, starting with http:// or https://, e.g. \"http://10.0.0.30:7480\".";
      }
      {
        assertion = lib.isList buckets;
        message = "${prefix}.buckets must be a list of bucket names (default [ ]: every bucket the keys can list), not ${lib.generators.toPretty { } buckets}.";
      }
      (intIn "concurrency" 1 64 4)
      (intIn "attempts" 1 20 4)
      (intIn "request_timeout_secs" 1 null 60)
    ]
    ++ keyFile "access_key_file" accessKey
    ++ keyFile "secret_key_file" secretKey
    ++ lib.imap0 (i: b: {
      assertion = lib.isString b && b != "" && !lib.hasInfix "/" b;
      message = "${prefix}.buckets: ${lib.generators.toPretty { } b} (item ${toString i}) is not a bucket name: a non-empty name without \"/\" (for keys below a prefix, use include = [ \"prefix/*\" ]).";
    }) (if lib.isList buckets then buckets else [ ]);

  # The socket of a drill's throwaway server is
  # <work_dir>/backuphub-drill-<job>-<pid>-<8 hex digits>/socket/.s.PGSQL.5432, and a Unix
  # socket path has at most 107 bytes. The pid has up to 7 digits (pid_max is 4194304).
  drillSocketPathLength = name: workDir: lib.stringLength workDir + lib.stringLength name + 55;

  # The daemon's own handle on an encrypted repository never holds the identity; a drill reads
  # snapshots with repository.identity_file. (Whether the repository is encrypted is its own
  # setting, from when it was created: recipients in settings are the likely sign.)
  settingsEncrypt =
    (repoSettings.recipients or [ ]) != [ ] || (repoSettings.recipients_file or null) != null;
  settingsIdentity = (repoSettings.identity_file or null) != null;

  postgresJobWarnings =
    name: job:
    let
      prefix = "services.backuphub.settings.jobs.${name}";
      password = job.password_file or null;
      drill = (withPostgresDefaults job).drill or null;
      workDir = if lib.isAttrs drill then drill.work_dir or null else null;
    in
    notCredentialWarning "jobs.${name}.password_file" password
    ++ lib.optional (lib.isString workDir && drillSocketPathLength name workDir > 107)
      "${prefix}.drill: the throwaway server's socket, ${workDir}/backuphub-drill-${name}-<pid>-<random>/socket/.s.PGSQL.5432, can be ${toString (drillSocketPathLength name workDir)} bytes long, more than the 107 a Unix socket path may have, and the server would not start: use a shorter drill.work_dir or job name."
    ++ lib.optional (lib.isAttrs drill && settingsEncrypt && !settingsIdentity)
      "${prefix}.drill: the repository is encrypted (repository.recipients), and a drill must read the latest snapshot, but repository.identity_file is not set: the drill will fail. Pass the age identity with services.backuphub.credentials.identity and set repository.identity_file = \"${credentialsDirectory}/identity\", or run drills on a machine that holds the identity."
    ++ lib.optional (lib.isAttrs drill && cfg.user == "root")
      "${prefix}.drill: services.backuphub.user is root, but initdb refuses root and the unit has no capabilities to switch to drill.run_as: the drill will fail. Run the service as an unprivileged user (the default, \"backuphub\").";

  # The kubeconfig and the token of kinds "kubernetes" and "volume".
  kubeConnectionWarnings =
    name: job:
    notCredentialWarning "jobs.${name}.kubeconfig" (job.kubeconfig or null)
    ++ notCredentialWarning "jobs.${name}.token_file" (job.token_file or null);

  s3JobWarnings =
    name: job:
    notCredentialWarning "jobs.${name}.access_key_file" (job.access_key_file or null)
    ++ notCredentialWarning "jobs.${name}.secret_key_file" (job.secret_key_file or null);

  # Tools of command jobs, on the service's PATH (and the admin command's). postgresqlPackage
  # is there for postgres jobs, and for command jobs (pg_dumpall) only when set explicitly, as
  # when its default was null: now that it has a default, a system without PostgreSQL must not
  # get it in its closure.
  postgresqlPackageSet =
    options.services.backuphub.postgresqlPackage.highestPrio < (lib.mkOptionDefault null).priority;
  servicePath =
    cfg.extraPackages
    ++ lib.optional (
      cfg.postgresqlPackage != null && (postgresJobs != { } || postgresqlPackageSet)
    ) cfg.postgresqlPackage;
  # A transient unit gets no NixOS service PATH (a service gets coreutils, findutils, grep, sed
  # and systemd after its `path`): `backuphub-admin run JOB` finds the job's tools first, then
  # the system's.
  adminPath = lib.concatStringsSep ":" (
    lib.optional (servicePath != [ ]) (lib.makeBinPath servicePath) ++ [ "/run/current-system/sw/bin" ]
  );

  # ---------------------------------------------------------------- the admin command
  # `backuphub-admin ARGS…` = `backuphub ARGS…` as the service user, with the service's
  # repository, state directory and configuration, in a transient unit (systemd-run), so that
  # nothing in the repository or the state directory ends up owned by root. `--identity FILE`
  # is taken out of ARGS and handed over as a credential of that unit: systemd reads the file
  # as root, the service user never needs access to it, and it never touches a disk.
  adminCommand = pkgs.writeShellScriptBin "backuphub-admin" ''
    set -euo pipefail
    if [ "$(id -u)" != 0 ]; then
      echo "backuphub-admin: run it as root (sudo backuphub-admin …); it runs backuphub as the user ${cfg.user}" >&2
      exit 1
    fi
    identity=
    identity_given=
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --identity)
          if [ $# -lt 2 ]; then
            echo "backuphub-admin: --identity needs a file" >&2
            exit 2
          fi
          identity=$2
          identity_given=1
          shift 2
          ;;
        --identity=*)
          identity=''${1#--identity=}
          identity_given=1
          shift
          ;;
        --)
          args+=("$@")
          break
          ;;
        *)
          args+=("$1")
          shift
          ;;
      esac
    done
    unit=backuphub-admin-$$
    # Relative paths in ARGS (restore --target ./x) mean the current directory, if the service
    # user may enter it; otherwise (sudo from a private home) the command runs in /.
    if ${pkgs.util-linux}/bin/runuser -u ${cfg.user} -- ${pkgs.coreutils}/bin/test -x "$PWD" 2>/dev/null; then
      extra=(--same-dir)
    else
      echo "backuphub-admin: $PWD is not accessible to ${cfg.user}; relative paths are taken from /" >&2
      extra=(--working-directory=/)
    fi
    if [ -n "$identity_given" ]; then
      # a file: systemd would load a directory as a tree of credentials
      if [ -z "$identity" ] || [ ! -f "$identity" ] || ! file=$(realpath -e -- "$identity"); then
        echo "backuphub-admin: no identity file '$identity'" >&2
        exit 1
      fi
      extra+=(-p "LoadCredential=identity:$file" -E "BACKUPHUB_IDENTITY=/run/credentials/$unit.service/identity")
    fi
    # --expand-environment=no: the service manager would otherwise expand "$NAME" and
    # "''${NAME}" in ARGS (a file name "a$b" would become "a"), as it does in ExecStart=.
    exec ${config.systemd.package}/bin/systemd-run --quiet --collect --wait --pipe \
      --service-type=exec --unit="$unit" --expand-environment=no \
      -p User=${cfg.user} -p Group=${cfg.group} \
      ${
        lib.optionalString (
          cfg.extraGroups != [ ]
        ) "-p SupplementaryGroups=${lib.escapeShellArg (toString cfg.extraGroups)} "
      }${
        lib.optionalString cfg.readAllFiles "-p AmbientCapabilities=CAP_DAC_READ_SEARCH "
      }-p RequiresMountsFor=${lib.escapeShellArg repoPath} -p UMask=0077 \
      ${
        lib.optionalString (
          cfg.environmentFile != null
        ) "-p EnvironmentFile=${lib.escapeShellArg cfg.environmentFile} "
      }-E BACKUPHUB_REPO=${lib.escapeShellArg repoPath} \
      -E BACKUPHUB_STATE_DIR=${lib.escapeShellArg stateDir} \
      -E BACKUPHUB_CONFIG=${cfg.configFile} \
      -E HOME=${homeDir} -E XDG_CACHE_HOME=${homeDir} \
      -E PATH=${lib.escapeShellArg adminPath} \
      "''${extra[@]}" -- ${lib.getExe cfg.package} "''${args[@]}"
  '';
in
{
  meta = {
    # The type only admits entries of lib.maintainers; none for an out-of-tree module.
    maintainers = [ ];
    doc = ./nix/module.md;
  };

  options.services.backuphub = {
    enable = mkEnableOption "backuphub, the pull-model backup daemon";

    package = mkPackageOption pkgs "backuphub" { };

    settings = mkOption {
      default = { };
      description = ''
        Configuration of backuphub, written to a TOML file
        (see the configuration reference in backuphub's README).
        Options not listed here are passed through as they are. Every path must be absolute.

        Secrets never belong here: the file lands in the world-readable Nix store. Pass them
        with `services.backuphub.credentials` and refer to them as
        `/run/credentials/backuphub.service/<name>`, e.g.
        `http.token_file = "/run/credentials/backuphub.service/api-token"`.
      '';
      example = literalExpression ''
        {
          repository.path = "/mnt/backup/backuphub";
          http = {
            listen = "0.0.0.0:9750";
            token_file = "/run/credentials/backuphub.service/api-token";
          };
          jobs.etc = {
            kind = "path";
            schedule = "0 0 2 * * *";
            timezone = "Europe/Berlin";
            paths = [ "/etc" ];
            retention.keep_daily = 14;
          };
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          repository = mkOption {
            default = { };
            description = "The backup repository.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                path = mkOption {
                  # null only so that a missing path gives a clear assertion message
                  type = types.nullOr types.str;
                  default = null;
                  description = ''
                    Directory of the repository (required, absolute). On a Pi, a directory on
                    the external disk: the unit has `RequiresMountsFor=` this path, so an
                    unmounted disk stops the service instead of filling the SD card.
                  '';
                  example = "/mnt/backup/backuphub";
                };
                create = mkOption {
                  type = types.bool;
                  default = false;
                  description = ''
                    Create the repository when it is missing. The module then also creates its
                    directory (owned by the service user) before the daemon starts.
                  '';
                };
                state_dir = mkOption {
                  type = types.str;
                  default = defaultStateDir;
                  description = ''
                    Local state (index cache, writer key). The default is the unit's
                    `StateDirectory=` (mode 0700). Another directory is created before the
                    daemon starts (mode 0700, owned by the service user), made writable for the
                    unit and added to its `RequiresMountsFor=`.
                  '';
                };
              };
            };
          };

          http = mkOption {
            default = { };
            description = "The HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/api/v1/status`).";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options.listen = mkOption {
                type = types.str;
                default = "127.0.0.1:9750";
                description = ''
                  IP address and port, `address:port` (IPv6 in brackets: `[::]:9750`). Not a
                  host name: the daemon does not resolve names. Use `0.0.0.0:9750` or
                  `[::]:9750` together with `services.backuphub.openFirewall` to let a
                  Prometheus on the LAN scrape it.
                '';
                example = "0.0.0.0:9750";
              };
            };
          };

          jobs = mkOption {
            default = { };
            description = ''
              Backup jobs, by name (1-64 characters of a-z, A-Z, 0-9, '-', '_', '.').
              Keys not listed here depend on `kind`.
            '';
            type = types.attrsOf (types.submodule jobModule);
            example = literalExpression ''
              {
                cephfs = {
                  kind = "path";
                  schedule = "0 0 3 * * *";
                  paths = [ "/srv/cephfs" ];
                  exclude = [ "*.tmp" ];
                };
                pgdump = {
                  kind = "command";
                  schedule = "0 15 2 * * *";
                  command = [ "pg_dumpall" "-h" "/run/postgresql" ];
                  name = "all.sql";
                };
                shop = {
                  kind = "postgres";
                  schedule = "0 30 2 * * *";
                  host = "db.lan";
                  user = "backup";
                  password_file = "/run/credentials/backuphub.service/shop-db"; # services.backuphub.credentials.shop-db
                  databases = [ "shop" ];
                  drill = {
                    schedule = "0 0 5 * * Sun";
                    checks = [ { database = "shop"; query = "SELECT count(*) FROM orders"; expect = ">= 1000"; } ];
                  };
                };
                cluster = {
                  kind = "kubernetes";
                  schedule = "0 0 1 * * *";
                  kubeconfig = "/run/credentials/backuphub.service/kubeconfig"; # services.backuphub.credentials.kubeconfig
                  exclude_namespaces = [ "kube-system" ];
                };
                volumes = {
                  kind = "volume";
                  schedule = "0 30 1 * * *";
                  kubeconfig = "/run/credentials/backuphub.service/kubeconfig";
                  volumes = [ "immich/library" "database/data-postgresql-0" ];
                };
                rgw = {
                  kind = "s3";
                  schedule = "0 0 4 * * *";
                  endpoint = "http://10.0.0.30:7480";
                  access_key_file = "/run/credentials/backuphub.service/rgw-access-key"; # services.backuphub.credentials.rgw-access-key
                  secret_key_file = "/run/credentials/backuphub.service/rgw-secret-key";
                  buckets = [ "photos" "docs" ];
                };
              }
            '';
          };
        };
      };
    };

    configFile = mkOption {
      type = types.package;
      default = checkedConfigFile;
      defaultText = literalExpression "the TOML file generated from settings, validated unless checkConfig is off";
      readOnly = true;
      internal = true;
      description = "The configuration file the daemon is started with.";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = checkPackage != null;
      defaultText = literalExpression "pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform || pkgs.buildPackages ? backuphub";
      description = ''
        Validate the generated configuration at build time with `backuphub config check`.
        The check runs on the build machine: with `package` when the build machine can run it,
        otherwise (a cross-compiled system) with `pkgs.buildPackages.backuphub`, the build
        platform's build of backuphub (the flake's overlay provides it there too). It is on by
        default whenever one of the two exists.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the TCP port of `services.backuphub.settings.http.listen` (metrics and status)
        in the firewall, for a Prometheus elsewhere on the LAN.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf secretPath;
      default = { };
      description = ''
        Secret files, by name, passed to the service with systemd's `LoadCredential=`: the file
        is read by systemd (as root) and shown to the daemon, and only to it, as
        `/run/credentials/backuphub.service/<name>`
        (see `services.backuphub.credentialsDirectory`). Refer to that path in
        `services.backuphub.settings`. Give the paths as strings: nothing here is copied
        into the Nix store. (The age identity for restores is not one of them: the daemon never
        reads it; hand it to `backuphub-admin --identity FILE`.)
      '';
      example = {
        api-token = "/var/lib/secrets/backuphub/api-token";
        etcd-key = "/var/lib/secrets/etcd/backup.key";
      };
    };

    credentialsDirectory = mkOption {
      type = types.str;
      default = credentialsDirectory;
      readOnly = true;
      description = ''
        Where the daemon sees `services.backuphub.credentials`, for use in settings, e.g.
        `"''${config.services.backuphub.credentialsDirectory}/api-token"`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      description = ''
        A file of `NAME=value` lines added to the service's environment (systemd
        `EnvironmentFile=`), e.g. for credentials of tools that command jobs run.
      '';
      example = "/var/lib/secrets/backuphub/env";
    };

    user = mkOption {
      type = types.str;
      default = "backuphub";
      description = ''
        User the daemon runs as. With the default, a system user is created. It needs write
        access to the repository (on an external disk: own the directory, or use
        `repository.create`, which creates it with this owner) and read access to what the jobs
        back up (see `extraGroups` and `readAllFiles`).
      '';
    };

    group = mkOption {
      type = types.str;
      default = "backuphub";
      description = "Group the daemon runs as. With the default, the group is created.";
    };

    uid = mkOption {
      type = types.nullOr types.int;
      default = null;
      description = ''
        A fixed uid for the created `backuphub` user. The repository lives on a removable
        disk: with the same uid on every machine (and after a reinstall) its files keep
        their owner. Only for the default `user`.
      '';
      example = 975;
    };

    gid = mkOption {
      type = types.nullOr types.int;
      default = null;
      description = "A fixed gid for the created `backuphub` group (see `uid`). Only for the default `group`.";
      example = 975;
    };

    extraGroups = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Supplementary groups of the daemon, e.g. to read the files a path job backs up.";
      example = [ "media" ];
    };

    readAllFiles = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let the daemon read every file, whatever its owner and mode, by granting it the
        capability `CAP_DAC_READ_SEARCH` (and nothing else: it still cannot write outside the
        repository and its state directory). For path jobs over files of many owners, where
        `extraGroups` is not enough. Command jobs inherit the capability.
      '';
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = ''
        Packages whose `bin/` is put on the service's `PATH`, for command jobs
        (`command = [ "etcdctl" … ]` instead of a store path).
      '';
      example = literalExpression "[ pkgs.etcd pkgs.sqlite ]";
    };

    postgresqlPackage = mkOption {
      type = types.nullOr types.package;
      default =
        if config.services.postgresql.enable or false then
          config.services.postgresql.package
        else
          pkgs.postgresql;
      defaultText = literalExpression ''
        if config.services.postgresql.enable then config.services.postgresql.package else pkgs.postgresql
      '';
      description = ''
        PostgreSQL for postgres jobs and their restore drills, and for command jobs.

        - Postgres jobs that set no `bin_dirs` get its `bin/` (then that of each of
          `postgresqlClientPackages`) as `bin_dirs`: its `pg_dump` must be at least as new as the
          servers it dumps.
        - A drill gets its `bin/` as `server_bin_dir` (the throwaway server: `initdb`, `postgres`,
          `psql`, `pg_restore`) when the job's `bin_dirs` are this single version. A package
          with JIT is given to jobs as its `withoutJIT` variant: the sandbox forbids
          writable-and-executable memory.
        - It is on the service's PATH (and `backuphub-admin`'s) when a postgres job exists, or,
          for command jobs such as `pg_dumpall`, when set explicitly.

        `null`: none of this (the daemon then looks on PATH).
      '';
      example = literalExpression "pkgs.postgresql_17";
    };

    postgresqlClientPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = ''
        More PostgreSQL versions for postgres jobs, after `postgresqlPackage` in their default
        `bin_dirs` (not on PATH). For each server the daemon takes the oldest `pg_dump` at
        least as new as the server, so that a dump restores into a server of its own version;
        a drill then takes the oldest server at least as new as the dumped one from the same
        directories.
      '';
      example = literalExpression "[ pkgs.postgresql_15 pkgs.postgresql_16 ]";
    };

    prometheusScrapeConfig = mkOption {
      type = types.attrs;
      readOnly = true;
      # honor_labels: the daemon's metrics carry a `job` label (the backup job); without it
      # Prometheus would rename it to `exported_job` in favour of the scrape job's name, and
      # the shipped dashboard and alerts select by `job`.
      default = {
        job_name = "backuphub";
        honor_labels = true;
        static_configs = [ { targets = [ "${config.networking.hostName}:${listenPortString}" ]; } ];
      };
      defaultText = literalExpression ''
        {
          job_name = "backuphub";
          honor_labels = true;
          static_configs = [ { targets = [ "''${config.networking.hostName}:<port of settings.http.listen>" ]; } ];
        }
      '';
      description = ''
        A scrape configuration for this daemon, ready for `services.prometheus.scrapeConfigs` of
        the machine that runs Prometheus (e.g. `nixosConfigurations.pi.config.services.backuphub.prometheusScrapeConfig`).
      '';
    };

    # The monitoring files the package installs (nix/package.nix, postInstall), for the machine
    # that runs Prometheus or Grafana, which may be another host of the same flake.
    monitoring = {
      prometheusRules = shareFile "alerts/backuphub.rules.yml" ''
        backuphub's Prometheus alerting rules (`alerts/backuphub.rules.yml`), for
        `services.prometheus.ruleFiles` of the machine that runs Prometheus, e.g.
        `[ self.nixosConfigurations.pi.config.services.backuphub.monitoring.prometheusRules ]`.
        They expect the scrape job of `prometheusScrapeConfig` (`job_name = "backuphub"`,
        `honor_labels = true`). Load these or `grafanaAlertRules`, not both.
      '';

      grafanaAlertRules = shareFile "alerts/grafana-provisioning.yml" ''
        The same alerts as `prometheusRules`, as Grafana-managed rules in Grafana's
        provisioning format (`alerts/grafana-provisioning.yml`), for
        `services.grafana.provision.alerting.rules.path`. Grafana expands
        `''${DS_PROMETHEUS}` in it from its environment: set
        `systemd.services.grafana.environment.DS_PROMETHEUS` to the uid of the Prometheus
        data source.
      '';

      grafanaDashboard = shareFile "dashboards/backuphub.json" ''
        backuphub's Grafana dashboard (`dashboards/backuphub.json`, with a `datasource`
        variable), for a file provider of Grafana's dashboard provisioning, e.g.
        `services.grafana.provision.dashboards.settings.providers = [ { name = "backuphub"; options.path = self.nixosConfigurations.pi.config.services.backuphub.monitoring.grafanaDashboard; } ]`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = repoPath != null;
        message = "services.backuphub.settings.repository.path must be set: the directory of the backup repository (e.g. \"/mnt/backup/backuphub\" on an external disk).";
      }
      {
        assertion = repoPath == null || isAbsolute repoPath;
        message = "services.backuphub.settings.repository.path must be an absolute path, not \"${toString repoPath}\".";
      }
      {
        assertion = !inStore repoPath && !inStore stateDir;
        message = "services.backuphub.settings.repository: the repository and the state directory cannot be in the read-only Nix store.";
      }
      {
        assertion = isAbsolute stateDir;
        message = "services.backuphub.settings.repository.state_dir must be an absolute path, not \"${stateDir}\".";
      }
      {
        assertion = listenParsed != null;
        message = "services.backuphub.settings.http.listen = \"${toString listen}\" is not an IP address and port: the daemon does not resolve host names. Write e.g. \"127.0.0.1:9750\", \"0.0.0.0:9750\" or \"[::]:9750\".";
      }
      {
        assertion = listenParsed == null || listenValid;
        message = "services.backuphub.settings.http.listen = \"${toString listen}\": the port must be between 1 and 65535.";
      }
      {
        assertion = !(cfg.openFirewall && listenIsLoopback);
        message = "services.backuphub.openFirewall is set, but settings.http.listen = \"${toString listen}\" listens on loopback only, so nothing outside this machine could connect. Set settings.http.listen to e.g. \"0.0.0.0:${listenPortString}\" or \"[::]:${listenPortString}\", or leave openFirewall off.";
      }
      {
        assertion = cfg.uid == null || cfg.user == "backuphub";
        message = "services.backuphub.uid is set, but services.backuphub.user = \"${cfg.user}\" is not created by this module: set users.users.${cfg.user}.uid instead.";
      }
      {
        assertion = cfg.gid == null || cfg.group == "backuphub";
        message = "services.backuphub.gid is set, but services.backuphub.group = \"${cfg.group}\" is not created by this module: set users.groups.${cfg.group}.gid instead.";
      }
    ]
    ++ lib.mapAttrsToList (name: _: {
      assertion = builtins.match "[A-Za-z0-9_.-]+" name != null;
      message = "services.backuphub.credentials.\"${name}\": a credential name may hold only letters, digits, '_', '.' and '-'.";
    }) cfg.credentials
    ++ optionalFileAssertions secretSettingAssertions "repository.identity_file" (
      repoSettings.identity_file or null
    )
    ++ optionalFileAssertions fileSettingAssertions "repository.recipients_file" (
      repoSettings.recipients_file or null
    )
    ++ optionalFileAssertions secretSettingAssertions "http.token_file" (
      cfg.settings.http.token_file or null
    )
    ++ jobAssertions;

    warnings =
      lib.concatLists (lib.mapAttrsToList postgresJobWarnings postgresJobs)
      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings kubernetesJobs)
      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings volumeJobs)
      ++ lib.concatLists (lib.mapAttrsToList s3JobWarnings s3Jobs);

    users.users = mkIf (cfg.user == "backuphub") {
      backuphub = {
        isSystemUser = true;
        group = cfg.group;
        description = "backuphub backup daemon";
        uid = cfg.uid;
      };
    };
    users.groups = mkIf (cfg.group == "backuphub") { backuphub.gid = cfg.gid; };

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && listenValid) listenPort;

    # `backuphub` for reading a repository by hand, `backuphub-admin` for everything on this
    # machine's repository (as the service user, with its state directory and configuration).
    environment.systemPackages = [
      cfg.package
      adminCommand
    ];

    systemd.services.backuphub = {
      description = "backuphub backup daemon";
      wantedBy = [ "multi-user.target" ];
      # Jobs pull from the network (databases, S3, Kubernetes). A Pi has no real-time clock:
      # snapshot times and retention need a set clock, so start after time-sync.target (which
      # waits for NTP only with systemd-time-wait-sync.service; see the module's documentation).
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "time-sync.target"
      ];

      path = servicePath;

      environment = {
        # for tools of command jobs that want a home or a cache (HOME is /var/empty otherwise)
        HOME = homeDir;
        XDG_CACHE_HOME = homeDir;
      };

      unitConfig = {
        # An unmounted external disk must stop the service, not fill the SD card: this pulls in
        # and orders after the mount units of these paths, and fails when they fail.
        RequiresMountsFor = [ repoPath ] ++ lib.optional customStateDir stateDir ++ extraDrillWorkDirs;
      };

      serviceConfig = {
        # systemd sets STATE_DIRECTORY=/var/lib/backuphub, which the daemon takes as its state
        # directory (matching the default of settings.repository.state_dir).
        ExecStart = "${lib.getExe cfg.package} daemon --config ${cfg.configFile}";
        # Directories that ReadWritePaths= names must exist before the sandbox is set up (a
        # missing one fails the unit with 226/NAMESPACE). "+": runs as root, unsandboxed, and
        # after the mounts of RequiresMountsFor above, so on the external disk.
        ExecStartPre =
          lib.optional cfg.settings.repository.create "+${pkgs.coreutils}/bin/install -d -m 0700 -o ${cfg.user} -g ${cfg.group} ${lib.escapeShellArg repoPath}"
          ++ lib.optional customStateDir "+${pkgs.coreutils}/bin/install -d -m 0700 -o ${cfg.user} -g ${cfg.group} ${lib.escapeShellArg stateDir}"
          ++ lib.optional (extraDrillWorkDirs != [ ]) "+${createDrillWorkDirs}";

        # READY=1 comes after the first look at the repository; on a large repository behind a
        # spun-down USB disk that can take long, and the daemon extends the start timeout
        # (EXTEND_TIMEOUT_USEC) while it waits.
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = 120;
        Restart = "on-failure";
        RestartSec = "30s";
        KillSignal = "SIGTERM";
        # A running job gets settings.daemon.stop_timeout_secs to finish writing its pack and
        # index, the server and the runtime a little more.
        TimeoutStopSec =
          let
            t = cfg.settings.daemon.stop_timeout_secs or 60;
          in
          if lib.isInt t then t + 30 else 90;

        # A Pi that also serves other things (MinIO): backups take what is left.
        Nice = mkDefault 10;
        IOSchedulingClass = mkDefault "idle";

        User = cfg.user;
        Group = cfg.group;
        SupplementaryGroups = cfg.extraGroups;

        StateDirectory = "backuphub";
        StateDirectoryMode = "0700";
        CacheDirectory = "backuphub";
        CacheDirectoryMode = "0700";
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;

        # Hardening. The whole file system stays readable (path jobs read it); only the repository,
        # the state and cache directories (and a drill.work_dir elsewhere) are writable. Command
        # jobs run in the same sandbox: nix/module.md says what that means for them and how to
        # relax each part.
        #
        # So does a postgres job's restore drill: initdb and a throwaway postgres, as the service
        # user, in drill.work_dir (by default <state_dir>/drill), listening on a Unix socket
        # only. Nothing below stops it; it is the sandbox of NixOS's own postgresql.service
        # (@system-service minus @privileged and @resources, MemoryDenyWriteExecute= without
        # JIT, which is why drills get a PostgreSQL without JIT; see withoutJIT). Its shared
        # memory is anonymous mmap, POSIX (/dev/shm, which PrivateDevices= keeps) and one small
        # System V segment (@ipc is part of @system-service); RemoveIPC= clears what a killed
        # drill leaves. PrivateTmp= does not matter to it: its socket is in its work directory.
        ProtectSystem = "strict";
        ReadWritePaths = [ repoPath ] ++ lib.optional customStateDir stateDir ++ extraDrillWorkDirs;
        # /home, /root and /run/user are hidden, or read-only when a path job backs up below them.
        ProtectHome = if backsUpHomes then "read-only" else true;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        # No capabilities: the daemon reads what its user/groups may read, unless readAllFiles.
        CapabilityBoundingSet = if cfg.readAllFiles then [ "CAP_DAC_READ_SEARCH" ] else "";
        AmbientCapabilities = if cfg.readAllFiles then [ "CAP_DAC_READ_SEARCH" ] else "";
        # AF_UNIX: journald, sd_notify, PostgreSQL's socket (a postgres job's host may be a socket
        # directory, and the drill's server listens on one only), nscd for host names;
        # AF_INET/AF_INET6: the HTTP endpoint and the sources jobs pull from (pg_dump over TCP,
        # the Kubernetes API over HTTPS, which the daemon speaks itself, with the CA of the
        # kubeconfig or ca_file, else the system's in /etc/ssl/certs, and for volume jobs exec
        # streams over WebSocket to the same API server; S3 over HTTP(S), also the daemon's
        # own). No AF_NETLINK (the drill's
        # server has no samehost/samenet rule that would enumerate interfaces), no AF_PACKET.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        SystemCallErrorNumber = "EPERM";
        SystemCallArchitectures = "native";
        MemoryDenyWriteExecute = true;
        UMask = "0077";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        # Other users' processes are hidden. The daemon's stale-lock detection only sees lock
        # holders of its own user, so run the CLI against the repository as the service user
        # (backuphub-admin does).
        ProtectProc = "invisible";
        # Not ProcSubset=pid: the daemon reads /proc/sys/kernel/random/boot_id and /proc/<pid>
        # to tell stale repository locks (from before a reboot or of a dead process) from live ones.
        ProcSubset = "all";
        # Not PrivateUsers=: it would map the owners of backed-up files to nobody and break
        # group-based read access.
        # Not PrivateNetwork=/IPAddressDeny=: jobs reach databases, S3 and Kubernetes on the LAN.
      };
    };
  };
}
