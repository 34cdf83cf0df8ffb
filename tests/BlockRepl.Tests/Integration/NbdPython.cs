using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// Runs Python scripts against libnbd's `nbd` module. The module lives in Debian's /usr/bin/python3
/// (python3-libnbd); another python3 earlier on PATH may lack it, so the interpreter is named explicitly.
/// Scripts report their findings as one JSON object on the last stdout line; the C# test asserts on it.
/// </summary>
internal static class NbdPython
{
    public const string Interpreter = "/usr/bin/python3";

    private static readonly SemaphoreSlim ModuleChecked = new(1, 1);
    private static bool s_moduleOk;

    public static async Task<ToolResult> RunAsync(string script, params string[] args)
    {
        await EnsureModuleAsync();
        return await Tool.RunAsync(Interpreter, ["-c", script, .. args], Tool.DefaultTimeout);
    }

    /// <summary>Runs the script, requires exit code 0, and parses its last stdout line as JSON.</summary>
    public static async Task<JsonElement> RunJsonAsync(string script, params string[] args)
    {
        var result = (await RunAsync(script, args)).EnsureSuccess();
        var last = result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .LastOrDefault();
        if (last is null)
        {
            Assert.Fail($"python printed nothing.\n{result}");
        }

        using var doc = JsonDocument.Parse(last);
        return doc.RootElement.Clone();
    }

    /// <summary>
    /// Starts a script that keeps running (e.g. holds a connection open); it reads commands from stdin.
    /// </summary>
    public static async Task<ChildProcess> StartAsync(string script, params string[] args)
    {
        await EnsureModuleAsync();
        return ChildProcess.Start(Interpreter, ["-u", "-c", script, .. args]);
    }

    private static async Task EnsureModuleAsync()
    {
        await ModuleChecked.WaitAsync();
        try
        {
            if (s_moduleOk)
            {
                return;
            }

            var check = await Tool.RunAsync(Interpreter, ["-c", "import nbd"], Tool.DefaultTimeout);
            if (check.ExitCode != 0)
            {
                Assert.Fail($"{Interpreter} cannot `import nbd`: {Tool.InstallHint("python3-libnbd")}.\n{check}");
            }

            s_moduleOk = true;
        }
        finally
        {
            ModuleChecked.Release();
        }
    }
}
