using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// One `blockrepl serve` process on a test's temporary directory: data in DIR/data, the admin socket at
/// DIR/admin.sock, NBD on 127.0.0.1 port 0 (or a unix socket). Start returns once the daemon printed its
/// ready line. Disposing always kills the process; <see cref="StopAsync"/> is the graceful path and asserts
/// exit code 0.
/// </summary>
internal sealed partial class DaemonProcess : IAsyncDisposable
{
    private readonly ChildProcess _child;

    private DaemonProcess(
        ChildProcess child, string dataDir, string volume, string nbdUri, string adminAddress, string imagePath, string? iscsiAddress,
        IReadOnlyList<string> moreNbdUris)
    {
        IscsiAddress = iscsiAddress;
        MoreNbdUris = moreNbdUris;
        _child = child;
        DataDir = dataDir;
        Volume = volume;
        NbdUri = nbdUri;
        AdminAddress = adminAddress;
        ImagePath = imagePath;
    }

    public string DataDir { get; }

    /// <summary>`127.0.0.1:PORT` of the iSCSI portal, as the ready line said (`iscsi=`), or null when it is off.</summary>
    public string? IscsiAddress { get; }

    public string Volume { get; }

    /// <summary>`nbd://127.0.0.1:PORT/NAME` or `nbd+unix:///NAME?socket=PATH`, exactly as the ready line said.</summary>
    public string NbdUri { get; }

    /// <summary>The URIs of the further NBD listeners of a `--nbd A,B` list (`nbd2=`, `nbd3=` of the ready line).</summary>
    public IReadOnlyList<string> MoreNbdUris { get; }

    /// <summary>`unix:PATH`, exactly as the ready line said.</summary>
    public string AdminAddress { get; }

    public string ImagePath { get; }

    public int Pid => _child.Id;

    public IReadOnlyList<string> StdoutLines => _child.StdoutLines;

    public string Stderr => _child.Stderr;

    /// <summary>The TCP port of an `nbd://` URI.</summary>
    public int TcpPort => new Uri(NbdUri).Port;

    /// <summary>The socket path of an `nbd+unix://` URI, or null.</summary>
    public string? UnixSocketPath
    {
        get
        {
            var marker = "?socket=";
            var at = NbdUri.IndexOf(marker, StringComparison.Ordinal);
            return at < 0 ? null : NbdUri[(at + marker.Length)..];
        }
    }

    public static string DataDirOf(TempDirectory dir) => dir.PathOf("data");

    public static string AdminSocketOf(TempDirectory dir) => dir.PathOf("admin.sock");

    public static string[] ServeArgs(TempDirectory dir, string size, string volume, string? nbd, string? image, IEnumerable<string>? extra = null)
    {
        List<string> args =
        [
            "serve",
            "--data-dir", DataDirOf(dir),
            "--volume", volume,
            "--size", size,
            "--nbd", nbd ?? "127.0.0.1:0",
            "--admin", "unix:" + AdminSocketOf(dir),
        ];
        if (image is not null)
        {
            args.AddRange(["--image", image]);
        }

        args.AddRange(extra ?? []);
        return [.. args];
    }

    /// <summary>Starts the daemon and waits for `blockrepl: ready volume=NAME nbd=URI admin=ADDR`.</summary>
    public static async Task<DaemonProcess> StartAsync(
        TempDirectory dir, string size = "64M", string volume = "vol", string? nbd = null, string? image = null, IEnumerable<string>? extra = null)
    {
        var child = ChildProcess.Start(RepoLayout.DaemonBinary, ServeArgs(dir, size, volume, nbd, image, extra));
        try
        {
            var line = await child.WaitForLineAsync(l => l.StartsWith("blockrepl: ready", StringComparison.Ordinal), "daemon ready line");
            var m = ReadyLine().Match(line);
            Assert.True(m.Success, $"malformed ready line: '{line}'");
            Assert.Equal(volume, m.Groups["volume"].Value);
            Assert.Equal("unix:" + AdminSocketOf(dir), m.Groups["admin"].Value);
            var uri = m.Groups["nbd"].Value;
            var firstNbd = nbd?.Split(',')[0];
            if (firstNbd is not null && firstNbd.StartsWith("unix:", StringComparison.Ordinal))
            {
                Assert.Equal($"nbd+unix:///{volume}?socket={firstNbd["unix:".Length..]}", uri);
            }
            else
            {
                Assert.Matches($"^nbd://127\\.0\\.0\\.1:[1-9][0-9]*/{Regex.Escape(volume)}$", uri);
            }

            var imagePath = image ?? Path.Combine(DataDirOf(dir), volume + ".img");
            var iscsi = m.Groups["iscsi"].Success ? m.Groups["iscsi"].Value : null;
            var more = m.Groups["more"].Captures.Select(c => c.Value).ToList();
            return new DaemonProcess(child, DataDirOf(dir), volume, uri, m.Groups["admin"].Value, imagePath, iscsi, more);
        }
        catch
        {
            await child.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Runs `blockrepl serve` expecting it to refuse to start. If it prints its ready line instead, it is killed
    /// and the test fails.
    /// </summary>
    public static async Task<ToolResult> RunExpectingExitAsync(
        TempDirectory dir, string size, string volume = "vol", string? nbd = null)
    {
        await using var child = ChildProcess.Start(RepoLayout.DaemonBinary, ServeArgs(dir, size, volume, nbd, null));
        var ready = await child.WaitForLineOrExitAsync(l => l.StartsWith("blockrepl: ready", StringComparison.Ordinal), "daemon exit");
        if (ready is not null)
        {
            Assert.Fail($"`{child.CommandLine}` started ('{ready}') but was expected to refuse.\n{child.Describe()}");
        }

        var exitCode = await child.WaitForExitAsync();
        return new ToolResult(child.CommandLine, exitCode, string.Join('\n', child.StdoutLines), child.Stderr);
    }

    /// <summary>`blockrepl status --admin ADDR --json`, parsed.</summary>
    public async Task<JsonElement> StatusJsonAsync()
    {
        var result = (await Tool.RunAsync(RepoLayout.DaemonBinary, ["status", "--admin", AdminAddress, "--json"], Tool.DefaultTimeout))
            .EnsureSuccess();
        try
        {
            using var doc = JsonDocument.Parse(result.Stdout);
            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            Assert.Fail($"status --json printed invalid JSON ({ex.Message}).\n{result}");
            throw;
        }
    }

    /// <summary>Waits (event-driven) for a log line of the daemon containing <paramref name="text"/>.</summary>
    public Task<string> WaitForLogAsync(string text) =>
        _child.WaitForStderrLineAsync(l => l.Contains(text, StringComparison.Ordinal), $"a log line containing '{text}'");

    /// <summary>SIGKILL: no chance to flush anything that is not already in the kernel.</summary>
    public async Task Kill9Async()
    {
        _child.Signal(ChildProcess.SIGKILL);
        await _child.WaitForExitAsync();
    }

    /// <summary>Waits for the daemon to exit by itself (e.g. a signal sent by a client script); returns its exit code.</summary>
    public Task<int> WaitForExitAsync() => _child.WaitForExitAsync();

    /// <summary>Sends <paramref name="signal"/> (SIGTERM by default), waits for exit, and asserts exit code 0.</summary>
    public async Task StopAsync(int signal = ChildProcess.SIGTERM)
    {
        _child.Signal(signal);
        var exitCode = await _child.WaitForExitAsync();
        Assert.True(exitCode == 0, $"daemon exited with code {exitCode} after signal {signal}, expected 0.\n{_child.Describe()}");
    }

    public ValueTask DisposeAsync() => _child.DisposeAsync();

    [GeneratedRegex(@"^blockrepl: ready volume=(?<volume>\S+) nbd=(?<nbd>\S+) admin=(?<admin>\S+)(?: iscsi=(?<iscsi>\S+))?(?: listen=\S+)?(?: peer=\S+)?(?: nbd[0-9]+=(?<more>\S+))*$")]
    private static partial Regex ReadyLine();
}
