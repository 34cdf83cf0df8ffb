using System.Globalization;
using BlockRepl.Tests.Integration;
using Xunit;

namespace BlockRepl.Tests.Replication.Pair;

/// <summary>tools/faultproxy.py in front of a daemon's replication port: delay, freeze, cut, garbage on command.</summary>
internal sealed class FaultProxy : IAsyncDisposable
{
    private readonly ChildProcess _child;
    private readonly string _control;

    private FaultProxy(ChildProcess child, string control, string address)
    {
        _child = child;
        _control = control;
        Address = address;
    }

    /// <summary>HOST:PORT the proxy listens on.</summary>
    public string Address { get; }

    public string Url => "http://" + Address;

    public static string Script => Path.Combine(RepoLayout.Root, "tools", "faultproxy.py");

    public static async Task<FaultProxy> StartAsync(TempDirectory dir, int targetPort)
    {
        var control = dir.PathOf("faultproxy.sock");
        var child = ChildProcess.Start(Script,
            ["--listen", "127.0.0.1:0", "--target", $"127.0.0.1:{targetPort.ToString(CultureInfo.InvariantCulture)}", "--control", control]);
        try
        {
            var line = await child.WaitForLineAsync(l => l.StartsWith("faultproxy: listening ", StringComparison.Ordinal), "faultproxy start");
            return new FaultProxy(child, control, line["faultproxy: listening ".Length..].Trim());
        }
        catch
        {
            await child.DisposeAsync();
            throw;
        }
    }

    /// <summary>Sends one control command; returns the proxy's answer line (starting with "ok").</summary>
    public async Task<string> SendAsync(string command)
    {
        var result = await Tool.RunAsync(Script, ["--control", _control, "--send", command], TimeSpan.FromSeconds(30));
        Assert.True(result.ExitCode == 0 && result.Stdout.StartsWith("ok", StringComparison.Ordinal), $"faultproxy '{command}': {result}");
        return result.Stdout.Trim();
    }

    /// <summary>`stats`: bytes written to the target (up) and to clients (down), cumulative since the proxy started.</summary>
    public async Task<(long Up, long Down)> StatsAsync()
    {
        var result = await Tool.RunAsync(Script, ["--control", _control, "--send", "stats"], TimeSpan.FromSeconds(30));
        var m = System.Text.RegularExpressions.Regex.Match(result.Stdout, @"^ok conns=\d+ bytes_up=(\d+) bytes_down=(\d+)");
        Assert.True(result.ExitCode == 0 && m.Success, $"faultproxy stats: {result}");
        return (long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));
    }

    public async ValueTask DisposeAsync()
    {
        if (!_child.HasExited)
        {
            _child.Signal(ChildProcess.SIGTERM);
        }

        await _child.DisposeAsync();
    }
}
