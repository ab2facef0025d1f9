{
  description = "backuphub: a pull-model backup daemon for a homelab";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      # x86_64 for development machines, aarch64 for the Raspberry Pi
      forAllSystems =
        f:
        nixpkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      overlays.default = final: prev: {
        backuphub = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.backuphub;
        backuphub = pkgs.backuphub;
      });

      # services.backuphub; its default package is pkgs.backuphub, from overlays.default
      nixosModules.default = ./module.nix;

      checks = forAllSystems (pkgs: {
        package = pkgs.backuphub;
        vm = import ./nix/tests/vm.nix { inherit pkgs; };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.backuphub ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nixfmt
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
