namespace BlockRepl.Core.Replication;

/// <summary>One node's identity and generations as compared at a handshake.</summary>
public sealed record GenerationInfo(ulong Current, ulong Bitmap, IReadOnlyList<ulong> History, bool Fresh, bool NeedsFullSync);

/// <summary>The outcome rows of the generations table (DESIGN.md), seen from the sending node.</summary>
public enum SyncDecision
{
    InSync,
    BitmapResync,
    FullResync,

    /// <summary>The receiver holds newer data: the sender must step down and become its sync target.</summary>
    PeerIsNewer,
    SplitBrain,
    Unrelated,
}

/// <summary>The generations table of DESIGN.md as a pure function, so every row has a unit test.</summary>
public static class GenerationRules
{
    /// <summary>
    /// Decides what happens when <paramref name="sender"/> (a primary) connects to <paramref name="receiver"/>.
    /// Identity (UUID, size) is checked before this; a fresh receiver is a full sync and adopts the UUID.
    /// </summary>
    public static (SyncDecision Decision, string Reason) Decide(GenerationInfo sender, GenerationInfo receiver)
    {
        ArgumentNullException.ThrowIfNull(sender);
        ArgumentNullException.ThrowIfNull(receiver);
        if (receiver.Fresh)
        {
            return (SyncDecision.FullResync, "the receiver is fresh (never synced): full sync, holes skipped");
        }

        var mustBeFull = sender.NeedsFullSync || receiver.NeedsFullSync;
        var fullWhy = sender.NeedsFullSync
            ? "the sender may hold writes no bitmap names (crash or demotion with writes unshipped)"
            : "the receiver may hold writes no bitmap names (crash or demotion with writes unshipped)";

        if (sender.Current == receiver.Current)
        {
            return mustBeFull
                ? (SyncDecision.FullResync, $"generations equal ({Hex(sender.Current)}) but {fullWhy}: full resync")
                : (SyncDecision.InSync, $"generations equal ({Hex(sender.Current)}): in sync");
        }

        if (sender.Bitmap != 0 && sender.Bitmap == receiver.Current)
        {
            return mustBeFull
                ? (SyncDecision.FullResync, $"bitmap generation matches, but {fullWhy}: full resync")
                : (SyncDecision.BitmapResync, $"the receiver is at the sender's bitmap generation {Hex(receiver.Current)}: bitmap resync");
        }

        if (sender.History.Contains(receiver.Current))
        {
            return (SyncDecision.FullResync, $"the receiver's generation {Hex(receiver.Current)} is in the sender's history: full resync");
        }

        if ((receiver.Bitmap != 0 && receiver.Bitmap == sender.Current) || receiver.History.Contains(sender.Current))
        {
            return (SyncDecision.PeerIsNewer, $"the receiver moved on from the sender's generation {Hex(sender.Current)}: the sender becomes its sync target");
        }

        var common = sender.History.Where(g => g != 0).Intersect(receiver.History).FirstOrDefault();
        if (common == 0 && sender.Bitmap != 0 && receiver.History.Contains(sender.Bitmap))
        {
            common = sender.Bitmap;
        }

        if (common == 0 && receiver.Bitmap != 0 && sender.History.Contains(receiver.Bitmap))
        {
            common = receiver.Bitmap;
        }

        return common != 0
            ? (SyncDecision.SplitBrain, $"split brain: both nodes changed since generation {Hex(common)} (sender {Hex(sender.Current)}, receiver {Hex(receiver.Current)})")
            : (SyncDecision.Unrelated, $"no common generation (sender {Hex(sender.Current)}, receiver {Hex(receiver.Current)}): unrelated data");
    }

    public static string Hex(ulong generation) => "0x" + generation.ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
}
