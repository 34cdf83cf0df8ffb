using BlockRepl.Core;

namespace BlockRepl.Nbd;

/// <summary>A volume as an NBD export: the export name is the volume name.</summary>
public sealed record NbdExport(Volume Volume, string Description)
{
    public string Name => Volume.Name;

    internal ushort TransmissionFlags(bool structuredReplies)
    {
        var flags = (ushort)(NbdProtocol.FlagHasFlags | NbdProtocol.FlagSendFlush | NbdProtocol.FlagSendFua
            | NbdProtocol.FlagCanMultiConn | NbdProtocol.FlagSendCache);
        if (Volume.IsWritable)
        {
            flags |= NbdProtocol.FlagSendTrim | NbdProtocol.FlagSendWriteZeroes | NbdProtocol.FlagSendFastZero;
        }
        else
        {
            flags |= NbdProtocol.FlagReadOnly;
        }

        if (structuredReplies)
        {
            flags |= NbdProtocol.FlagSendDf; // only meaningful, and only allowed, with structured replies
        }

        return flags;
    }
}
