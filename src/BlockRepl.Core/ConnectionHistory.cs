namespace BlockRepl.Core;

/// <summary>
/// Every change of one volume's connection state, recorded where it is made: one log line each
/// (<c>volume NAME: connection OLD -&gt; NEW</c>) and how many times each state was entered since the daemon
/// started. A state that lasts a few milliseconds (ahead, behind, a short resync) shows here although a status
/// poll may never land inside it.
/// </summary>
/// <remarks>
/// Callers report the state they have just set, still holding the lock under which they set it (the link's
/// gate for the sending side), so the reports of one side come in the order of its changes. Invariant:
/// <see cref="_current"/>, <see cref="_entries"/> and the log line change together under <see cref="_gate"/>;
/// the sink is called under it (so lines come out in transition order) and must not call back into the volume.
/// </remarks>
public sealed class ConnectionHistory
{
    private readonly Lock _gate = new();
    private readonly long[] _entries = new long[Enum.GetValues<ConnectionState>().Length];
    private readonly string _volume;
    private ConnectionState _current;

    public ConnectionHistory(string volume, ConnectionState initial)
    {
        _volume = volume;
        _current = initial;
    }

    /// <summary>Receives each transition as one line; set by the daemon before replication starts.</summary>
    public Action<string>? Log { get; set; }

    /// <summary>Records <paramref name="state"/> as the current state; a change is counted and logged, a repeat is not.</summary>
    public void Enter(ConnectionState state)
    {
        lock (_gate)
        {
            if (state == _current)
            {
                return;
            }

            var old = _current;
            _current = state;
            _entries[(int)state]++;
            Log?.Invoke($"volume {_volume}: connection {old.Name()} -> {state.Name()}");
        }
    }

    /// <summary>How many times each state was entered (states never entered are left out), by the names status prints.</summary>
    public IReadOnlyDictionary<string, long> Entries()
    {
        lock (_gate)
        {
            var entries = new SortedDictionary<string, long>(StringComparer.Ordinal);
            foreach (var state in Enum.GetValues<ConnectionState>())
            {
                if (_entries[(int)state] > 0)
                {
                    entries[state.Name()] = _entries[(int)state];
                }
            }

            return entries;
        }
    }
}
