using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// Where the repository and the daemon binary are. The root is the nearest ancestor of the test assembly's
/// directory that holds BlockRepl.sln; the daemon is the one built in the same configuration and target
/// framework as this test assembly (bin/&lt;Configuration&gt;/&lt;tfm&gt;). BLOCKREPL_BIN overrides the binary.
/// </summary>
internal static class RepoLayout
{
    private static readonly Lazy<string> LazyRoot = new(FindRoot);

    public static string Root => LazyRoot.Value;

    public static string DaemonBinary
    {
        get
        {
            var overridePath = Environment.GetEnvironmentVariable("BLOCKREPL_BIN");
            if (!string.IsNullOrEmpty(overridePath))
            {
                return overridePath;
            }

            var tfmDir = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/'));
            var configuration = tfmDir.Parent?.Name is "Debug" or "Release" ? tfmDir.Parent.Name : "Release";
            var tfm = tfmDir.Name.StartsWith("net", StringComparison.Ordinal) ? tfmDir.Name : "net10.0";
            var path = Path.Combine(Root, "src", "BlockRepl", "bin", configuration, tfm, "blockrepl");
            if (!File.Exists(path))
            {
                Assert.Fail($"daemon binary {path} not found: build it with `dotnet build BlockRepl.sln -c {configuration}`");
            }

            return path;
        }
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "BlockRepl.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no BlockRepl.sln above {AppContext.BaseDirectory}");
    }
}
