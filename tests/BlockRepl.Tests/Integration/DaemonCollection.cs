using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// Integration tests start their own daemons (free ports, their own temporary directories), so each test class
/// is its own collection and xunit.runner.json runs up to maxParallelThreads of them at once. A class goes into
/// this collection only when a test in it depends on the machine's speed (e.g. acting inside a window of a few
/// hundred milliseconds): such classes run alone, after the parallel ones.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DaemonCollection
{
    public const string Name = "daemon (alone)";
}
