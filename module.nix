# NixOS module: services.backuphub
#
# Used as `nixosModules.default` of this repository's flake. The default package is
# `pkgs.backuphub`, which the flake's `overlays.default` provides.
{
  config,
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
    types
    literalExpression
    ;

  cfg = config.services.backuphub;

  settingsFormat = pkgs.formats.toml { };

  # systemd exposes the files of `LoadCredential=` here (for the unit backuphub.service).
  credentialsDirectory = "/run/credentials/backuphub.service";

  defaultStateDir = "/var/lib/backuphub";

  repoPath = cfg.settings.repository.path;
  stateDir = cfg.settings.repository.state_dir;

  # "127.0.0.1:9750", "0.0.0.0:9750", "[::]:9750", "localhost:9750" -> host and port
  listen = cfg.settings.http.listen;
  listenPortString = lib.last (lib.splitString ":" listen);
  listenPort = lib.toInt listenPortString;
  listenHost = lib.removePrefix "[" (lib.removeSuffix "]" (lib.removeSuffix ":${listenPortString}" listen));
  listenIsLoopback = listenHost == "localhost" || listenHost == "::1" || lib.hasPrefix "127." listenHost;

  # TOML has no null: drop unset optional values (repository.path stays unset only in a
  # configuration that fails its assertions anyway).
  finalSettings = lib.filterAttrsRecursive (_: v: v != null) cfg.settings;

  configFile = settingsFormat.generate "backuphub.toml" finalSettings;

  # Build-time validation, as the ntpd-rs module does: a configuration the daemon would reject
  # fails `nixos-rebuild` instead of the service at boot.
  checkedConfigFile =
    if cfg.checkConfig then
      pkgs.runCommand "backuphub-config-checked" { } ''
        ${cfg.package}/bin/backuphub config check --config ${configFile}
        cp ${configFile} $out
      ''
    else
      configFile;

  jobKinds = [
    "path"
    "command"
    # later: "postgres" "kubernetes" "s3"
  ];

  jobModule =
    { name, ... }:
    {
      freeformType = settingsFormat.type;
      options = {
        kind = mkOption {
          type = types.enum jobKinds;
          description = ''
            What the job backs up. `path`: files and directories (`paths`, optional `exclude`).
            `command`: the standard output of a command (`command`, a list of arguments, and
            `name`, the file name of the stream in the snapshot).
          '';
          example = "path";
        };
        schedule = mkOption {
          type = types.str;
          description = ''
            When the job runs: a cron expression with seconds
            (`second minute hour day-of-month month day-of-week`).
          '';
          example = "0 0 2 * * *";
        };
        timezone = mkOption {
          type = types.str;
          default = "UTC";
          description = "The IANA time zone `schedule` is read in.";
          example = "Europe/Berlin";
        };
      };
    };

  jobAssertions = lib.flatten (
    lib.mapAttrsToList (
      name: job:
      let
        prefix = "services.backuphub.settings.jobs.${name}";
      in
      lib.optional (job.kind == "path") {
        assertion = lib.isList (job.paths or null) && job.paths != [ ];
        message = "${prefix}: a job of kind \"path\" needs `paths`, a non-empty list of absolute paths.";
      }
      ++ lib.optionals (job.kind == "command") [
        {
          assertion = lib.isList (job.command or null) && job.command != [ ];
          message = "${prefix}: a job of kind \"command\" needs `command`, a non-empty list of arguments (e.g. [ \"pg_dumpall\" \"-h\" \"/run/postgresql\" ]).";
        }
        {
          assertion = lib.isString (job.name or null) && job.name != "";
          message = "${prefix}: a job of kind \"command\" needs `name`, the file name of its output in the snapshot (e.g. \"all.sql\").";
        }
      ]
    ) cfg.settings.jobs
  );
in
{
  options.services.backuphub = {
    enable = mkEnableOption "backuphub, the pull-model backup daemon";

    package = mkPackageOption pkgs "backuphub" { };

    settings = mkOption {
      default = { };
      description = ''
        Configuration of backuphub, written to a TOML file
        (see the configuration reference in backuphub's README).
        Options not listed here are passed through as they are.

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
                    Directory of the repository (required). On a Pi, a directory on the external
                    disk: the unit has `RequiresMountsFor=` this path, so an unmounted disk stops the
                    service instead of filling the SD card.
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
                    `StateDirectory=` (mode 0700); another directory is made writable for the unit.
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
                type = types.strMatching "(\\[[0-9A-Fa-f:.]+]|[^:]+):[0-9]+";
                default = "127.0.0.1:9750";
                description = ''
                  Address and port, `host:port` (IPv6 in brackets: `[::]:9750`). Use
                  `0.0.0.0:9750` or `[::]:9750` together with
                  `services.backuphub.openFirewall` to let a Prometheus on the LAN scrape it.
                '';
                example = "0.0.0.0:9750";
              };
            };
          };

          jobs = mkOption {
            default = { };
            description = "Backup jobs, by name. Keys not listed here depend on `kind`.";
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
      default = true;
      description = ''
        Validate the generated configuration at build time with `backuphub config check`.
        This runs the package on the build machine: turn it off for cross builds.
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
        into the Nix store.
      '';
      example = {
        identity = "/var/lib/secrets/backuphub/age-identity.txt";
        api-token = "/var/lib/secrets/backuphub/api-token";
      };
    };

    credentialsDirectory = mkOption {
      type = types.str;
      default = credentialsDirectory;
      readOnly = true;
      description = ''
        Where the daemon sees `services.backuphub.credentials`, for use in settings, e.g.
        `"''${config.services.backuphub.credentialsDirectory}/identity"`.
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
        back up.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "backuphub";
      description = "Group the daemon runs as. With the default, the group is created.";
    };

    extraGroups = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Supplementary groups of the daemon, e.g. to read the files a path job backs up.";
      example = [ "media" ];
    };

    postgresqlPackage = mkOption {
      type = types.nullOr types.package;
      default = null;
      description = ''
        A PostgreSQL package whose binaries (`pg_dump`, `pg_dumpall`, `psql`, …) are put on the
        service's PATH, for command jobs. Use the server's version or newer.
      '';
      example = literalExpression "config.services.postgresql.package";
    };

    prometheusScrapeConfig = mkOption {
      type = types.attrs;
      readOnly = true;
      default = {
        job_name = "backuphub";
        static_configs = [ { targets = [ "${config.networking.hostName}:${listenPortString}" ]; } ];
      };
      defaultText = literalExpression ''
        {
          job_name = "backuphub";
          static_configs = [ { targets = [ "''${config.networking.hostName}:<port of settings.http.listen>" ]; } ];
        }
      '';
      description = ''
        A scrape configuration for this daemon, ready for `services.prometheus.scrapeConfigs` of
        the machine that runs Prometheus (e.g. `nixosConfigurations.pi.config.services.backuphub.prometheusScrapeConfig`).
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
        assertion = repoPath == null || lib.hasPrefix "/" repoPath;
        message = "services.backuphub.settings.repository.path must be an absolute path, not \"${toString repoPath}\".";
      }
      {
        assertion = lib.hasPrefix "/" stateDir;
        message = "services.backuphub.settings.repository.state_dir must be an absolute path, not \"${stateDir}\".";
      }
      {
        assertion = listenPort >= 1 && listenPort <= 65535;
        message = "services.backuphub.settings.http.listen = \"${listen}\": the port must be between 1 and 65535.";
      }
      {
        assertion = !(cfg.openFirewall && listenIsLoopback);
        message = "services.backuphub.openFirewall is set, but settings.http.listen = \"${listen}\" listens on loopback only, so nothing outside this machine could connect. Set settings.http.listen to e.g. \"0.0.0.0:${listenPortString}\" or \"[::]:${listenPortString}\", or leave openFirewall off.";
      }
    ]
    ++ lib.mapAttrsToList (name: _: {
      assertion = builtins.match "[A-Za-z0-9_.-]+" name != null;
      message = "services.backuphub.credentials.\"${name}\": a credential name may hold only letters, digits, '_', '.' and '-'.";
    }) cfg.credentials
    ++ jobAssertions;

    users.users = mkIf (cfg.user == "backuphub") {
      backuphub = {
        isSystemUser = true;
        group = cfg.group;
        description = "backuphub backup daemon";
      };
    };
    users.groups = mkIf (cfg.group == "backuphub") { backuphub = { }; };

    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall listenPort;

    # the CLI (restore, cat, check); run it as the service user: sudo -u backuphub backuphub …
    environment.systemPackages = [ cfg.package ];

    systemd.services.backuphub = {
      description = "backuphub backup daemon";
      wantedBy = [ "multi-user.target" ];
      # jobs pull from the network (databases, S3, Kubernetes)
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      path = lib.optional (cfg.postgresqlPackage != null) cfg.postgresqlPackage;

      unitConfig = {
        # An unmounted external disk must stop the service, not fill the SD card: this pulls in
        # and orders after the mount units of these paths, and fails when they fail.
        RequiresMountsFor = [ repoPath ] ++ lib.optional (stateDir != defaultStateDir) stateDir;
      };

      serviceConfig = {
        # systemd sets STATE_DIRECTORY=/var/lib/backuphub, which the daemon takes as its state
        # directory (matching the default of settings.repository.state_dir).
        ExecStart = "${cfg.package}/bin/backuphub daemon --config ${cfg.configFile}";
        # With repository.create the directory must exist before the sandbox is set up
        # (ReadWritePaths= of a missing path fails the unit). "+": runs as root, unsandboxed, and
        # after the mount of the repository (RequiresMountsFor above), so on the external disk.
        ExecStartPre = lib.optional cfg.settings.repository.create "+${pkgs.coreutils}/bin/install -d -m 0700 -o ${cfg.user} -g ${cfg.group} ${lib.escapeShellArg repoPath}";

        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = 120;
        Restart = "on-failure";
        RestartSec = "30s";
        KillSignal = "SIGTERM";
        # a running job gets time to finish writing its pack and index
        TimeoutStopSec = 90;

        User = cfg.user;
        Group = cfg.group;
        SupplementaryGroups = cfg.extraGroups;

        StateDirectory = "backuphub";
        StateDirectoryMode = "0700";
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;

        # Hardening. The whole file system stays readable (path jobs read it); only the repository
        # and the state directory are writable.
        ProtectSystem = "strict";
        ReadWritePaths = [ repoPath ] ++ lib.optional (stateDir != defaultStateDir) stateDir;
        # /home and /root are hidden. Backing them up needs
        # systemd.services.backuphub.serviceConfig.ProtectHome = lib.mkForce "read-only";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        # No capabilities: the daemon reads what its user/groups may read. (Reading every file
        # would need CAP_DAC_READ_SEARCH here and in AmbientCapabilities.)
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        # AF_UNIX: journald, sd_notify, PostgreSQL's socket; AF_INET/AF_INET6: HTTP endpoint and
        # the sources jobs pull from. No AF_NETLINK/AF_PACKET.
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
        # holders of its own user, so run the CLI against the repository as the service user.
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
