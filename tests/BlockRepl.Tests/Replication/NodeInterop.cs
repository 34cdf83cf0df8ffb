using BlockRepl.Tests.Integration;

namespace BlockRepl.Tests.Replication;

/// <summary>
/// The @grpc/grpc-js peers in tests/interop: checks node and npm are installed (failing the test with the
/// install command otherwise) and runs <c>npm ci</c> once, skipping it when node_modules already matches
/// package-lock.json.
/// </summary>
internal static class NodeInterop
{
    private static readonly SemaphoreSlim InstallGate = new(1, 1);
    private static bool s_installed;

    public static string Directory => Path.Combine(RepoLayout.Root, "tests", "interop");

    public static string Node => Require("node");

    public static async Task EnsureInstalledAsync()
    {
        var npm = Require("npm");
        await InstallGate.WaitAsync();
        try
        {
            if (s_installed)
            {
                return;
            }

            // npm writes node_modules/.package-lock.json on install; newer than the lock means up to date.
            var lockFile = Path.Combine(Directory, "package-lock.json");
            var installed = Path.Combine(Directory, "node_modules", ".package-lock.json");
            if (!File.Exists(installed) || File.GetLastWriteTimeUtc(installed) < File.GetLastWriteTimeUtc(lockFile)
                || !File.Exists(Path.Combine(Directory, "node_modules", "@grpc", "grpc-js", "package.json")))
            {
                var result = await Tool.RunAsync(npm, ["--prefix", Directory, "ci", "--no-audit", "--no-fund"], TimeSpan.FromMinutes(5));
                result.EnsureSuccess();
            }

            s_installed = true;
        }
        finally
        {
            InstallGate.Release();
        }
    }

    private static string Require(string name)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        Assert.Fail($"{name} is not installed: install it with `apt-get install -y nodejs npm` (or run `make deps`)");
        return null!;
    }
}
