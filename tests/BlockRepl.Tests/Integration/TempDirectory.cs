using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// A directory under /tmp owned by one test, removed with everything in it on dispose. Names are short so
/// that unix socket paths inside stay far below the 108-byte sun_path limit.
/// </summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine("/tmp", "blockrepl-it-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string PathOf(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover directory under /tmp must not turn a passing test into a failure.
        }
    }
}
