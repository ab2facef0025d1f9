# NixOS VM test: `nix flake check` (or `nix build .#checks.x86_64-linux.vm`).
# `pkgs` must contain backuphub (the flake passes nixpkgs with overlays.default).
{ pkgs }:

pkgs.testers.runNixOSTest {
  name = "backuphub";

  nodes.machine =
    { config, pkgs, lib, ... }:
    {
      imports = [ ../../module.nix ];

      virtualisation.memorySize = 1024;

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];

      # what the path job backs up
      systemd.tmpfiles.rules = [
        "d /srv/data 0755 root root -"
        "f /srv/data/hello.txt 0644 root root - hello from the path job"
      ];

      services.postgresql = {
        enable = true;
        # test only: any local user may connect as any role (the daemon dumps as "postgres")
        authentication = lib.mkForce "local all all trust";
      };

      services.backuphub = {
        enable = true;
        postgresqlPackage = config.services.postgresql.package;
        settings = {
          repository = {
            path = "/var/backup/backuphub";
            create = true;
          };
          jobs = {
            data = {
              kind = "path";
              schedule = "0 * * * * *";
              paths = [ "/srv/data" ];
            };
            pgdump = {
              kind = "command";
              schedule = "0 * * * * *";
              command = [
                "pg_dumpall"
                "-h"
                "/run/postgresql"
                "-U"
                "postgres"
              ];
              name = "all.sql";
            };
          };
        };
      };

      # Started by the test script once the database holds the row to compare.
      systemd.services.backuphub = {
        wantedBy = lib.mkForce [ ];
        after = [ "postgresql.service" ];
      };
    };

  testScript = ''
    def psql(sql, db="postgres"):
        return machine.succeed(f"psql -U postgres -d {db} -tAc \"{sql}\"").strip()

    def wait_for_job(job):
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:9750/api/v1/status"
            f" | jq -e '.jobs[] | select(.name == \"{job}\") | .last_run.status == \"complete\"'",
            timeout=300,
        )

    machine.wait_for_unit("postgresql.service")
    psql("CREATE DATABASE drill")
    psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'hello from backuphub')", db="drill")

    machine.succeed("systemctl start backuphub.service")  # Type=notify: returns once READY=1
    machine.wait_for_open_port(9750)
    machine.succeed("curl -sf http://127.0.0.1:9750/healthz")
    machine.succeed("curl -sf http://127.0.0.1:9750/readyz")

    with subtest("both jobs complete"):
        wait_for_job("data")
        wait_for_job("pgdump")

    with subtest("metrics"):
        machine.succeed(
            "curl -sf http://127.0.0.1:9750/metrics | grep -q backuphub_job_last_success_timestamp_seconds"
        )

    with subtest("restore the dump"):
        psql("DROP DATABASE drill")
        machine.fail("psql -U postgres -d drill -c 'SELECT 1'")
        # as the service user, so nothing in the repository ends up owned by root
        machine.succeed(
            "runuser -u backuphub -- backuphub cat --repo /var/backup/backuphub latest:pgdump all.sql > /tmp/all.sql"
        )
        # the dump also re-creates existing roles; psql reports those errors and goes on
        machine.succeed("psql -U postgres -d postgres -f /tmp/all.sql")
        value = psql("SELECT v FROM t WHERE id = 1", db="drill")
        assert value == "hello from backuphub", f"restored row: {value!r}"

    with subtest("hardening"):
        machine.succeed("systemctl show backuphub.service -p ProtectSystem | grep -qx ProtectSystem=strict")
        machine.succeed("test \"$(stat -c %U /var/backup/backuphub)\" = backuphub")
  '';
}
